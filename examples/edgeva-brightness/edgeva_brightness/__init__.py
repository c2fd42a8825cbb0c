"""An example third-party edgeva module type (``brightness``), packaged on its own."""
