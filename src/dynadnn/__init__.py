"""dynadnn: dynamic DNNs at run time."""
__version__ = "0.1.0"

from . import zoo  # registers the zoo: scheme
