"""Files for people to look at, written without torch: videos (H.264 mp4 or GIF), meshes (PLY, OBJ), MRC volumes.

numpy + Pillow (+ imageio-ffmpeg for mp4), so the training side (`generator/video.py`, `generator/mesh.py`) and
the torch-free serving side can both write them.
"""
