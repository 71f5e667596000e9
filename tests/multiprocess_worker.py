"""One process of a multi-process CPU run (used by test_multiprocess.py, not collected).

argv: process_id num_processes port workdir local_devices steps
"""

import faulthandler
import os
import sys

# A worker still running after 9 minutes (the test waits 10) prints where every thread is, then
# exits: a hang in a collective shows up in the test's failure message.
faulthandler.dump_traceback_later(540, exit=True)

pid, num, port, workdir, local, steps = sys.argv[1:7]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if int(num) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The chief writes figures and reports after training, so on a loaded machine the other
    # process may wait at the shutdown barrier for minutes, and a starved process may miss
    # heartbeats for as long: both limits lie beyond the test's own (the stack dump above at
    # 540 s, the test's deadline at 600 s), so those decide when a stuck run ends.
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=int(num),
        process_id=int(pid),
        heartbeat_timeout_seconds=900,
        shutdown_timeout_seconds=900,
    )

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

from configs import tiny  # noqa: E402
from spmix_jax import evaluate, train  # noqa: E402

config = tiny.get_config()
config.optim.total_steps = int(steps)
config.train.eval_every = int(steps)
assert train.train_and_evaluate(config, workdir)
evaluate.run(config, workdir, "eval")
print(f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices, ok")
