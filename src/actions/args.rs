//! Positional argument binding with the Go agent's rules: extra arguments are ignored, missing ones are
//! an error unless the parameter is optional, and a type mismatch names the argument and the problem.

use crate::error::Context as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A tuple of argument types decoded from the `arguments` array.
pub trait FromArgs: Sized {
    /// Decodes the arguments.
    fn from_args(args: &[Value]) -> Result<Self, String>;
}

/// Decodes `arguments` into a tuple of typed values.
pub fn bind<T: FromArgs>(args: &[Value]) -> Result<T, String> {
    T::from_args(args).context("Extracting method arguments from payload")
}

fn one<T: DeserializeOwned>(args: &[Value], i: usize, expected: usize) -> Result<T, String> {
    match args.get(i) {
        Some(v) => T::deserialize(v).with_context(|| format!("argument {}", i + 1)),
        // An absent trailing argument is acceptable only where `null` is (an `Option`).
        None => T::deserialize(&Value::Null)
            .map_err(|_| format!("Not enough arguments, expected {expected}, got {}", args.len())),
    }
}

impl FromArgs for () {
    fn from_args(_: &[Value]) -> Result<Self, String> {
        Ok(())
    }
}

impl<A: DeserializeOwned> FromArgs for (A,) {
    fn from_args(args: &[Value]) -> Result<Self, String> {
        Ok((one(args, 0, 1)?,))
    }
}

impl<A: DeserializeOwned, B: DeserializeOwned> FromArgs for (A, B) {
    fn from_args(args: &[Value]) -> Result<Self, String> {
        Ok((one(args, 0, 2)?, one(args, 1, 2)?))
    }
}

/// Implements [`FromArgs`] for a tuple of 3 or more types; each position is decoded with [`one`].
macro_rules! tuple_args {
    ($n:literal; $($t:ident $i:tt),+) => {
        impl<$($t: DeserializeOwned),+> FromArgs for ($($t,)+) {
            fn from_args(args: &[Value]) -> Result<Self, String> {
                Ok(($(one(args, $i, $n)?,)+))
            }
        }
    };
}

tuple_args!(3; A 0, B 1, C 2);
tuple_args!(4; A 0, B 1, C 2, D 3);
// `compile_package [blobstore_id, digest, name, version, deps]` has five positional arguments.
tuple_args!(5; A 0, B 1, C 2, D 3, E 4);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binds_like_the_go_agent() {
        assert!(bind::<()>(&[json!("extra")]).is_ok());
        let (s,): (String,) = bind(&[json!("id"), json!(1)]).unwrap();
        assert_eq!(s, "id");
        let e = bind::<(String,)>(&[]).unwrap_err();
        assert_eq!(e, "Extracting method arguments from payload: Not enough arguments, expected 1, got 0");
        let e = bind::<(String,)>(&[json!(5)]).unwrap_err();
        assert!(e.contains("argument 1: invalid type: integer `5`, expected a string"), "{e}");
        let (o,): (Option<String>,) = bind(&[]).unwrap();
        assert_eq!(o, None);
        let (a, b, c, d, e): (String, String, String, String, Option<Value>) =
            bind(&[json!("a"), json!("b"), json!("c"), json!("d")]).unwrap();
        assert_eq!((a.as_str(), b.as_str(), c.as_str(), d.as_str(), e), ("a", "b", "c", "d", None));
        let e = bind::<(String, String, String)>(&[json!("a")]).unwrap_err();
        assert!(e.ends_with("Not enough arguments, expected 3, got 1"), "{e}");
    }
}
