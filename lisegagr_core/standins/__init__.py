"""Stand-ins for tests, benchmarks and the demo. None of this is the method.

Each stands in for something the method needs but a test cannot have: SAM's answer, or real
imagery. The method never uses one unless a run is handed it (`source_specs.SourceSpec`
admits `GroundTruthSpec`, so a whole region run can be checked against known fields).

- `farmland`: synthetic farmland scenes with exact field instances (the demo, the tests);
- `oracle`: hooks that make a SAM with random weights answer from the image's own colour
  segments, so mask generation after the decoder can be timed and tested;
- `ground_truth`: a mask source that answers from a known instance raster, with controllable
  misses and merges (`GroundTruthMaskSource`, and by value `GroundTruthSpec`).
"""
