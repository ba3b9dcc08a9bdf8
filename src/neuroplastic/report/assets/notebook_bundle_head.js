(function () {
  var np = window.__neuroplastic = window.__neuroplastic || {pending: [], n: 0};
  if (!(window.CircuitsVis && typeof window.CircuitsVis.render === "function")) {
    try {
      window.CircuitsVis = (function (define, module, exports) {
