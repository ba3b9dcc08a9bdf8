
return CircuitsVis;
      })();
    } catch (err) {
      console.error("neuroplastic: the CircuitsVis bundle failed to load: " + err);
      return;
    }
  }
  np.pending.splice(0).forEach(function (draw) { draw(window.CircuitsVis); });
})();
