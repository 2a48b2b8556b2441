"""strego's web app: a JSON API for operators (``pip install strego[web]``), served by
``strego web``. See `create_app`."""

from strego.web.app import create_app

__all__ = ["create_app"]
