"""Settings the dashboard starts from: the engine's method, trimmed so a CPU demo stays quick.

The engine's own defaults (100 perturbations, up to 10 Newton steps on all retained images)
are the thorough choice; on a laptop CPU they take minutes for the small CNN. These presets
take curvature from a random subsample of the retained photos and stop after three Newton
steps, which on the built-in small CNN still removes a person in seconds (check it on the
Audit page against retraining).
"""
from lcodec_core.config import UnlearnConfig

# The Forget page's defaults (every field can be changed there).
DEFAULT = UnlearnConfig(num_perturbations=20, max_slices=4, solver="cg", newton_steps=3,
                        cg_iterations=20, retain_subsample=128)
# The guided first removal on Start here (no settings shown).
GUIDED = DEFAULT
# Each step of the Live accuracy page.
LIVE = GUIDED
