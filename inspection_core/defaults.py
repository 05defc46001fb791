"""The judging defaults every tool shares, written once (issue 27): what the line, `engines`, `calibration` and
training use when neither a recipe nor the rule `engines accept` wrote beside the weights says otherwise. No
imports, so command-line parsers can take them without loading numpy or OpenCV."""

#: Tile overlap in pixels.
DEFAULT_OVERLAP = 32
#: A pixel is a defect pixel at this score or above.
DEFAULT_SCORE_THRESHOLD = 0.5
#: The smallest defect, in pixels.
DEFAULT_MIN_AREA_PX = 30
#: A classifier's class is present in a patch when its score is above this (the recipe's [classifier] threshold).
DEFAULT_LABEL_THRESHOLD = 0.5
