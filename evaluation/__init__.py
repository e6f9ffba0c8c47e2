"""`evaluation`: PTI inversion and the My3DGen evaluation protocol (paper §4.1), written as tables and plots.

Modules:

* `metrics` - LPIPS and DISTS on generator images in [-1, 1] (the reconstruction metrics of Table 1).
* `identity_score` - ID score: cosine similarity to the nearest reference photo in identity-feature space,
  with a pluggable identity backend (ArcFace weights you bring, dlib offline, or a randomly initialised
  network that is named as a smoke test wherever it is used).
* `pti` - Pivotal Tuning Inversion of one photo into a (personal) model; the tuned weights are an adapter file.
* `protocol` - inversion metrics and synthesis-by-interpolation metrics over several models.
* `report` - markdown tables shaped like the paper's Tables 1-3, a JSON of every raw number, the ID-vs-t plot.
* `commands` - the `invert` and `eval` CLI commands.

Heavy modules (torch networks) are imported by the submodules, not here, so `import evaluation` stays cheap.
"""
