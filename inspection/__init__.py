"""The one inspector: frame → :class:`~inspection_core.records.InspectionResult`, one layer above the bottom.

- :mod:`inspection.inspector`: :class:`~inspection.inspector.Inspector`, the only composition of calibrate →
  prepare → tile → engine → stitch → defects → verdict (and the classifier stage), with its options: a calibration
  profile (the calibrated form), ``streaming`` (line-scan parts inspected while they arrive) and ``reuse_scores``
  (sweeps over decision rules without running the networks again);
- :mod:`inspection.scoring`: the one scoring path of both forms (tile rows cut, scored and stitched as lines come;
  a frame inspected whole is a part whose lines are all in);
- :mod:`inspection.streaming`: the machinery of the streaming option (a worker thread feeding each block to the
  part's scoring);
- :mod:`inspection.classifier`: the classifier stage run on an engine over large patches of a frame;
- :mod:`inspection.feed`: :class:`~inspection.feed.ResultFeed`, the hand-over of results to displays.

It imports only :mod:`inspection_core` (and numpy, OpenCV, the standard library): engines, calibration and the
station all use it, and it uses none of them. Engines and calibration profiles reach it as objects that follow
:class:`inspection_core.engine.Engine` and the small protocols in :mod:`inspection.inspector`.
"""
from __future__ import annotations
