#!/usr/bin/env python3
"""Validates an Envoy bootstrap YAML against Envoy's own protos (PyPI `xds-protos`).

Every field name, enum value and `@type` must exist in Envoy's v3 API, or this exits non-zero
naming the problem. Usage: check_bootstrap.py FILE.yaml (not named validate.py: that would shadow the `validate` protos)
"""
import json
import sys

import yaml
from google.protobuf import json_format

# The descriptors of every extension the examples name must be loaded for `@type` to resolve.
import envoy.config.bootstrap.v3.bootstrap_pb2 as bootstrap_pb2
import envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2  # noqa: F401
import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2  # noqa: F401
import envoy.extensions.filters.http.jwt_authn.v3.config_pb2  # noqa: F401
import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401


def main(path):
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(json.loads(json.dumps(document)), bootstrap, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        print(f"{path}: not a valid Envoy bootstrap: {error}", file=sys.stderr)
        return 1
    listeners = len(bootstrap.static_resources.listeners)
    clusters = len(bootstrap.static_resources.clusters)
    print(f"{path}: valid Envoy v3 bootstrap ({listeners} listener(s), {clusters} cluster(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
