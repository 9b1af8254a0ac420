//! `named_enum!`: an enum whose every variant has one stable name, written
//! once. The name is what `as_str` returns, what serde writes and reads,
//! what the database stores and what metric labels carry, so the wire, the
//! store and the dashboards can never disagree about it.

/// ```ignore
/// named_enum! {
///     /// Who wrote a message.
///     pub enum MessageRole { User = "user", Assistant = "assistant" }
/// }
/// ```
/// gives `as_str()`, `ALL`, `Serialize`, `Deserialize` and
/// `TryFrom<String>` (for diesel's `deserialize_as`).
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "'{other}' is not a {}: expected one of {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = std::borrow::Cow::<str>::deserialize(d)?;
                name.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        pub enum Colour { Red = "red", DarkBlue = "dark_blue" }
    }

    #[test]
    fn one_name_everywhere() {
        for &c in Colour::ALL {
            let wire = serde_json::to_value(c).unwrap();
            assert_eq!(wire, c.as_str());
            assert_eq!(serde_json::from_value::<Colour>(wire).unwrap(), c);
            assert_eq!(Colour::try_from(c.to_string()), Ok(c));
        }
        let e = serde_json::from_str::<Colour>("\"green\"").unwrap_err();
        assert!(
            e.to_string().contains("expected one of red, dark_blue"),
            "{e}"
        );
    }
}
