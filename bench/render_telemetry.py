"""The README's telemetry pictures: rillet.bench.render_telemetry (it takes no options)."""

from rillet.bench.render_telemetry import main

if __name__ == "__main__":
    main()
