"""Checks a Terraform example without Terraform (no provider registry here):

- it parses as HCL (python-hcl2);
- every provider is pinned to the exact version examples/terraform/schemas.json was read from;
- every argument and block name of every provider, resource and data block is one the pinned
  provider's source declares for that type, and every `TYPE.NAME.ATTR` reference names an
  attribute of TYPE;
- the templatefile() of the user-data passes a value for every `${...}` placeholder of the
  snippet imgbuild wrote; the snippet rendered with sample values is written out for
  `cloud-init schema`.

Usage: check.py MAIN_TF SCHEMAS_JSON USER_DATA RENDERED_OUT
"""
import json
import re
import sys

import hcl2

main_tf, schemas_path, user_data_path, rendered_out = sys.argv[1:5]
with open(main_tf) as f:
    text = f.read()
with open(main_tf) as f:
    doc = hcl2.load(f)
schemas = json.load(open(schemas_path))
errors = []

META = {"count", "for_each", "depends_on", "lifecycle", "provisioner", "connection",
        "provider", "__start_line__", "__end_line__"}

# Providers: exact pins, and which schema set each local name uses.
sources = {}
for block in doc.get("terraform", []):
    for rp in block.get("required_providers", []):
        for local, spec in rp.items():
            source, version = spec["source"].lower(), spec.get("version", "")
            pinned = schemas.get(source)
            if pinned is None:
                errors.append(f"provider {local}: no schema for source {source}")
                continue
            if version != pinned["version"]:
                errors.append(f"provider {local}: version {version!r} is not pinned to "
                              f"{pinned['version']!r} (the version whose source was checked)")
            sources[local] = source
sources.setdefault("terraform", "terraform")


def schema_for(kind, rtype):
    local = "terraform" if rtype == "terraform_data" else rtype.split("_", 1)[0]
    source = sources.get(local)
    if source is None:
        errors.append(f"{kind} {rtype}: provider {local} is not in required_providers")
        return None
    key = rtype if kind == "resource" else f"data.{rtype}"
    names = schemas[source]["schemas"].get(key)
    if names is None:
        errors.append(f"{kind} {rtype}: no schema for {key} in {source}")
    return set(names) if names else None


def walk(where, body, names):
    if isinstance(body, list):
        for b in body:
            walk(where, b, names)
        return
    if not isinstance(body, dict):
        return
    for k, v in body.items():
        if k in META:
            continue
        if k not in names:
            errors.append(f"{where}: `{k}` is not an argument or block of this type")
        if isinstance(v, (dict, list)) and any(isinstance(x, dict) for x in (v if isinstance(v, list) else [v])):
            walk(f"{where}.{k}", v, names)


for kind in ("resource", "data"):
    for block in doc.get(kind, []):
        for rtype, named in block.items():
            names = schema_for(kind, rtype)
            if names is None:
                continue
            for name, body in named.items():
                walk(f"{kind}.{rtype}.{name}", body, names)
for block in doc.get("provider", []):
    for local, body in block.items():
        source = sources.get(local)
        if source:
            walk(f"provider.{local}", body, set(schemas[source]["schemas"].get("provider", [])))

# References: data.TYPE.NAME.ATTR and TYPE.NAME.ATTR (with [N] and nested .ATTR).
for m in re.finditer(r"\b(data\.)?((?:coder|proxmox)_\w+)\.(\w+)((?:\[\d+\])?(?:\.\w+(?:\[\d+\])?)+)", text):
    data, rtype, _, rest = m.groups()
    names = schema_for("data" if data else "resource", rtype)
    if names is None:
        continue
    for attr in re.findall(r"\.(\w+)", rest):
        if attr not in names and attr != "id":
            errors.append(f"reference {m.group(0)}: `{attr}` is not an attribute of {rtype}")

# templatefile(): the snippet's placeholders are all passed.
with open(user_data_path) as f:
    user_data = f.read()
placeholders = set(re.findall(r"(?<!\$)\$\{(\w+)\}", user_data))
call = re.search(r"templatefile\([^,]+,\s*\{(.*?)\}\s*\)", text, re.S)
if not call:
    errors.append("no templatefile() of the user-data")
    passed = set()
else:
    passed = set(re.findall(r"(\w+)\s*=", call.group(1)))
for p in sorted(placeholders - passed):
    errors.append(f"the user-data's `${{{p}}}` is not passed to templatefile()")
if not placeholders:
    errors.append("the user-data has no placeholders: was it built from the Coder recipe?")

# Render as templatefile() would (`${name}` replaced, `$${` left as `${`).
samples = {"agent_token": "TEST-AGENT-TOKEN-1234", "init_script": "echo coder agent init"}
rendered = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: samples.get(m.group(1), "x"), user_data)
rendered = rendered.replace("$${", "${")
with open(rendered_out, "w") as f:
    f.write(rendered)

if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok: {main_tf}")
