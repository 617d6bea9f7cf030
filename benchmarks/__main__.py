import sys

from benchmarks.procs import stop_children_on_sigterm

stop_children_on_sigterm()
if sys.argv[1:2] == ["engine"]:
    # The site engine's benchmark: ``python -m benchmarks engine [--quick|--smoke]``.
    from benchmarks.engine.run import main as engine_main

    engine_main(sys.argv[2:])
else:
    from benchmarks.run import main

    main()
    if "--smoke" in sys.argv[1:] and "--only" not in sys.argv[1:]:
        from benchmarks.engine.run import main as engine_main

        engine_main(["--smoke"])
