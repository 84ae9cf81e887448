"""A tenant probing another's prompt in the prefix cache: rillet.bench.tenant_cache (`--help` for its options)."""

from rillet.bench.tenant_cache import main

if __name__ == "__main__":
    main()
