"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

# 8 simulated devices so the sharded paths run in every test. PJRT_NPROC >= 2x the
# device count avoids the XLA CPU deadlock of simulated devices on a 2-core machine.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("PJRT_NPROC", "16")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags

# grain workers read absl flags; nothing here goes through absl.app.run.
flags.FLAGS.mark_as_parsed()
