"""The runtime manager: family members resident and warm, monitors, a policy and knobs, so a DNN meets
changing latency and accuracy targets while other processes come and go.

Layout: `options` (the knob space as data), `monitors` (what is read), `knobs` (what is turned: the
backends and thread counts of each member), `policies/` (how it decides, one file each), `manager`
(the `RuntimeManager` that ties them together), `scenario` (real competing processes on a schedule) and
`trace` (what a run writes: trace.json, trace.png, a summary table).
"""

from .options import Option, SystemSample, Targets
from .policies import REGISTRY as POLICIES, make_policy

__all__ = ["Option", "SystemSample", "Targets", "POLICIES", "make_policy"]
