"""The local web page to try a model (`python -m anime_gan.app`): the library behind the command.

    choices   the models the page offers (`find_models`) and the loaded ones (`Models`)
    uploads   one image or video upload through the command line's own functions, the results kept
    live      the live camera: one stream at a time, its lease, one frame in and out (`LiveStreams`)
    server    the Flask application (`create_app`, its routes) and a werkzeug `Server`
    static/   the page itself: plain HTML, CSS and JS, no CDN, no build step

The page is a thin layer over the command line's library (`anime_gan.inference`,
`anime_gan.image_io`), never a second path: a bad upload gets the command line's one-sentence message.
This package's own import is light (no TensorFlow, no Flask), so the command can read its defaults.
"""

DEFAULT_PORT = 7860
DEFAULT_UPLOAD_MB = 50
