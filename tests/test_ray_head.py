"""The test head's worker-port block never overlaps its component ports (Ray refuses to start when it does)."""
from ray_head import worker_port_block


def test_worker_block_avoids_component_ports():
    # Every 200-port block of 40000-41000 but 40400-40599 holds a component port, so that block is the only choice.
    avoid = [40001, 40250, 40799, 40800]
    for _ in range(50):
        assert worker_port_block((40000, 41000), avoid=avoid) == 40400


def test_the_ci_collision_is_avoided():
    # CI failure of stop 9: runtime_env_agent got 49871, inside the drawn worker block 49800-49999.
    for _ in range(200):
        start = worker_port_block((40000, 60000), avoid=[49871])
        assert not start <= 49871 < start + 200
