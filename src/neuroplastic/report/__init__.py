"""Everything a researcher sees: HTML pages, CircuitsVis neuron views and the run and sweep
reports."""
