"""``lrpath report``: the paper's case study for one decision as one self-contained HTML page."""
