"""Test and development helpers, kept out of the product packages (nothing under generator/, train/, ... imports
them): `synthetic` (the ground-truth person G* behind the tests and `samples/tiny_person/`) and
`official_pickle_writer` (official-format EG3D pickles for the reader's tests)."""
