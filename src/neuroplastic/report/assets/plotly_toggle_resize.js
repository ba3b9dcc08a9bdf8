document.addEventListener("toggle", function (event) {
  var el = event.target;
  if (!el.open || !window.Plotly || !el.querySelectorAll) { return; }
  Array.prototype.forEach.call(el.querySelectorAll(".plotly-graph-div"), function (div) {
    window.Plotly.Plots.resize(div);
  });
}, true);
