"""Test helpers shared by several test modules, kept out of the product packages (nothing under generator/, train/,
... imports them): `cli` (run `cli.py` as a user does), `official_pickle_writer` (official-format EG3D pickles for
the reader's tests), `management_api` (TorchServe's management routing as a model, the corpus of spellings and the
model store the model-API guard's tests share) and `photos` (the astronaut photo and dlib backend fixtures of the
preprocess tests)."""
