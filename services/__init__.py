"""The Faust recommendation worker: the app, its state, decoding, acks, metrics, `serve`."""
