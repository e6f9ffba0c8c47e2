"""A web page to play with a person: choose a person, turn their head, interpolate between anchors, download a
video or a mesh. `web.app.WebApp` is the model side (PyTorch), `web.server` a small stdlib HTTP server,
`web/page.html` the page. Started by `cli.py web`."""
