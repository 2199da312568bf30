"""A pickle that does something when unpickled: what checkpoints and state files must never load."""


class Payload:
    """Unpickling this creates ``path``: what a planted pickle would do on a careless load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))
