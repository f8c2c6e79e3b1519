//! Canonical JSON: object keys sorted, no whitespace. Used for cache keys and for OCI
//! documents, so the same content always has the same digest whatever map type produced it.

use serde::Serialize;
use serde_json::Value;

/// Serializes `v` canonically.
pub fn to_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(encode(&serde_json::to_value(v)?))
}

/// Encodes a JSON value canonically (infallible: a `Value` always has string keys).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                write(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(e, out);
            }
            out.push(b']');
        }
        // Display of a scalar `Value` is its compact JSON.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 1, "x": 2} ], "c": "s\"q"}});
        assert_eq!(
            String::from_utf8(super::encode(&v)).unwrap(),
            r#"{"a":{"c":"s\"q","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }
}
