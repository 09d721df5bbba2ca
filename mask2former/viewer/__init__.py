"""The data and prediction viewer: its computations, and its Streamlit page (app.py).

Everything but app.py is plain Python (numpy, pandas) so it can be tested without Streamlit:
  paths    the folders the viewer may read (`Roots`), file signatures for cache keys
  data     a COCO json indexed for browsing, label maps rendered per image, thumbnails
  stats    the Dataset page's tables
  compare  prediction sets (submission CSV or prediction folder) against ground truth or each other
  augment  draws of the training mapper
  model    the Model page's computations: a --model's Predictor on one photo, its overlay, class shares, mIoU
  launch   tools/viewer.py's entry point: argument checks, the `streamlit run` command line, the localhost check
and the page, the only module that imports streamlit:
  app      the Streamlit page (sidebar, the five pages, the caches), run by `streamlit run tools/viewer.py`
"""
