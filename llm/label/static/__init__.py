"""The ranking page's static files (HTML, CSS, plain JavaScript), read as package data."""
