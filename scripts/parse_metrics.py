#!/usr/bin/env python3
"""Parses Prometheus text exposition on stdin with the reference client's
parser (prometheus_client.parser.text_string_to_metric_families) and
prints it as JSON: {family: {"type", "help", "samples": [{"name",
"labels", "value"}]}}. A value that is not finite is a string ("NaN",
"+Inf", "-Inf"). Exits 3 if prometheus_client is missing, 1 if the text
does not parse.

Used by headend/tests/it/metrics.rs as a parser independent of the headend's.
Install the parser with: python3 -m pip install prometheus_client
"""
import json
import math
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("prometheus_client is missing: python3 -m pip install prometheus_client",
          file=sys.stderr)
    sys.exit(3)


def value(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return v


def main():
    text = sys.stdin.read()
    out = {}
    try:
        for fam in text_string_to_metric_families(text):
            if fam.name in out:
                raise ValueError(f"family {fam.name} appears twice")
            out[fam.name] = {
                "type": fam.type,
                "help": fam.documentation,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": value(s.value)}
                    for s in fam.samples
                ],
            }
    except Exception as e:  # the parser raises ValueError and others
        print(f"the exposition does not parse: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
