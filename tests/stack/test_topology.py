from services.stack.topology import StackSettings, processes


def test_the_gateway_is_wired_to_every_replica_and_no_two_processes_share_a_port():
    settings = StackSettings(features_replicas=2, postprocess_replicas=3, triton_replicas=2)
    stack = {p.name: p for p in processes(settings)}

    gateway = stack["gateway"].env
    assert gateway["SCOREGRAPH_GATEWAY_FEATURES_ADDRESSES"] == "127.0.0.1:50061,127.0.0.1:50062"
    assert gateway["SCOREGRAPH_GATEWAY_POSTPROCESS_ADDRESSES"].count(",") == 2
    assert gateway["SCOREGRAPH_GATEWAY_TRITON_ADDRESSES"] == "127.0.0.1:8001,127.0.0.1:8011"

    ports = []
    for process in stack.values():
        ports += [int(v) for k, v in process.env.items() if k.endswith("PORT")]
        argv = process.argv
        ports += [int(argv[i + 1]) for i, a in enumerate(argv) if a.endswith("-port")]
    assert len(ports) == len(set(ports)), sorted(ports)


def test_every_process_has_a_health_address_to_wait_on():
    stack = processes(StackSettings())
    assert [p.name for p in stack] == ["triton-0", "features-0", "postprocess-0", "gateway"]
    assert all(p.health_address.startswith("127.0.0.1:") for p in stack)
