(function (rootId, script) {
  "use strict";
  var parent = script && script.parentNode;
  var root = parent && parent.classList && parent.classList.contains("np-inline")
    ? parent : document.getElementById(rootId);
  if (!root) { return; }
  var np = window.__neuroplastic = window.__neuroplastic || {pending: [], n: 0};
  var blocks = root.querySelectorAll('script[type="application/json"][data-circuitsvis]');
  function box(block) {
    return root.querySelector('[id="' + block.getAttribute("data-target") + '"]');
  }
  function draw(cv) {
    if (root.getAttribute("data-np-drawn")) { return; }
    root.setAttribute("data-np-drawn", "1");
    Array.prototype.forEach.call(blocks, function (block) {
      var name = block.getAttribute("data-circuitsvis");
      var target = box(block);
      if (!target) { return; }
      try {
        if (cv[name] == null) { throw new Error("CircuitsVis has no component " + name); }
        np.n += 1;
        target.id = block.getAttribute("data-target") + "-" + np.n;
        target.className = target.className.replace(/ ?np-waiting/g, "");
        target.textContent = "";
        cv.render(target.id, cv[name], JSON.parse(block.textContent));
      } catch (err) {
        console.error("neuroplastic: CircuitsVis view " + target.id + " failed: " + err);
        target.className += " np-error";
        target.textContent = "This " + name + " view failed to render: " + err;
      }
    });
  }
  if (window.CircuitsVis && typeof window.CircuitsVis.render === "function") {
    draw(window.CircuitsVis);
    return;
  }
  Array.prototype.forEach.call(blocks, function (block) {
    var target = box(block);
    if (target) { target.textContent = WAITING; }
  });
  np.pending.push(draw);
})(ROOT_ID, document.currentScript);
