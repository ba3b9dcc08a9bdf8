(function () {
  "use strict";
  var cv = window.CircuitsVis;
  var blocks = document.querySelectorAll('script[type="application/json"][data-circuitsvis]');
  Array.prototype.forEach.call(blocks, function (block) {
    var target = block.getAttribute("data-target");
    var name = block.getAttribute("data-circuitsvis");
    var box = document.getElementById(target);
    try {
      if (!cv || typeof cv.render !== "function") {
        throw new Error("the CircuitsVis bundle did not load");
      }
      if (cv[name] == null) { throw new Error("CircuitsVis has no component " + name); }
      cv.render(target, cv[name], JSON.parse(block.textContent));
    } catch (err) {
      console.error("neuroplastic: CircuitsVis view #" + target + " failed: " + err);
      if (box) {
        box.className += " np-error";
        box.textContent = "This " + name + " view failed to render: " + err;
      }
    }
  });
})();
