//! Authorization: which verified clients the demo server answers (`--allow-client`).
//!
//! mTLS verification says *who* the client is; this decides whether that identity may talk to us.
//! A client is allowed when one of its URI SANs (its SPIFFE ID) equals a pattern, or starts with a
//! pattern's prefix when the pattern ends in `*`. The single pattern `*` allows every verified
//! client, and so does giving no pattern at all. Comparison is exact, byte for byte: SPIFFE IDs are
//! case sensitive, and a prefix pattern should end in `/` (`spiffe://td/ns/shop/*`) so it cannot
//! match a sibling (`spiffe://td/ns/shopping/…`).

/// The outcome for one client, with a reason fit for a log line and the JSON reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// Decide for a client whose certificate carries `uri_sans`, under `patterns`.
pub(crate) fn authorize(patterns: &[String], uri_sans: &[String]) -> Decision {
    let allowed = |reason: String| Decision {
        allowed: true,
        reason,
    };
    if patterns.is_empty() {
        return allowed("no --allow-client given: every verified client is allowed".into());
    }
    if patterns.iter().any(|p| p == "*") {
        return allowed("--allow-client * allows every verified client".into());
    }
    for pattern in patterns {
        let matched = match pattern.strip_suffix('*') {
            Some(prefix) => uri_sans.iter().find(|uri| uri.starts_with(prefix)),
            None => uri_sans.iter().find(|uri| *uri == pattern),
        };
        if let Some(uri) = matched {
            let uri = super::identity::printable(uri);
            return allowed(format!("URI SAN {uri} matches --allow-client {pattern}"));
        }
    }
    let wanted = patterns.join(", ");
    Decision {
        allowed: false,
        reason: if uri_sans.is_empty() {
            format!(
                "the client certificate has no URI SAN (SPIFFE ID) to match --allow-client {wanted}"
            )
        } else {
            format!("no URI SAN matches --allow-client {wanted}")
        },
    }
}

/// Checks one `--allow-client` value: non-empty, no blanks, and `*` only as the last character (a
/// prefix match), so a typo fails the start instead of silently refusing every client.
pub(crate) fn parse_pattern(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("an empty pattern would match nothing; use * to allow every client".into());
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{input:?} contains blanks or control characters"));
    }
    if input.trim_end_matches('*').contains('*') || input.ends_with("**") {
        return Err(format!(
            "{input:?}: only one trailing * is supported (a prefix match, e.g. spiffe://cluster.local/ns/shop/*)"
        ));
    }
    Ok(input.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOPPER: &str = "spiffe://cluster.local/ns/shop/sa/shopper";

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn table() {
        // (patterns, client URI SANs, allowed, reason contains)
        let cases: &[(&[&str], &[&str], bool, &str)] = &[
            (&[], &[SHOPPER], true, "no --allow-client given"),
            (&[], &[], true, "no --allow-client given"),
            (&["*"], &[SHOPPER], true, "--allow-client * allows"),
            (&["*"], &[], true, "--allow-client * allows"),
            (&["spiffe://x/y", "*"], &[], true, "--allow-client * allows"),
            // Exact.
            (
                &[SHOPPER],
                &[SHOPPER],
                true,
                "matches --allow-client spiffe://",
            ),
            (
                &[SHOPPER],
                &["spiffe://cluster.local/ns/shop/sa/shopper2"],
                false,
                "no URI SAN matches",
            ),
            (
                &[SHOPPER],
                &["spiffe://cluster.local/ns/shop/sa"],
                false,
                "no URI SAN matches",
            ),
            // Prefix.
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &[SHOPPER],
                true,
                "matches --allow-client spiffe://cluster.local/ns/shop/*",
            ),
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &["spiffe://cluster.local/ns/shopping/sa/x"],
                false,
                "no URI SAN matches --allow-client spiffe://cluster.local/ns/shop/*",
            ),
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &["spiffe://cluster.local/ns/shop"],
                false,
                "no URI SAN matches",
            ),
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &["spiffe://cluster.local/ns/shop/"],
                true,
                "matches",
            ),
            (
                &["spiffe://other.domain/ns/shop/*"],
                &[SHOPPER],
                false,
                "no URI SAN matches",
            ),
            // Case sensitive, both in the trust domain and the path.
            (
                &["spiffe://cluster.local/ns/Shop/*"],
                &[SHOPPER],
                false,
                "no URI SAN matches",
            ),
            (
                &["SPIFFE://cluster.local/ns/shop/sa/shopper"],
                &[SHOPPER],
                false,
                "no URI SAN matches",
            ),
            (
                &[SHOPPER],
                &["spiffe://Cluster.local/ns/shop/sa/shopper"],
                false,
                "no URI SAN matches",
            ),
            // No URI SAN at all (a DNS-only certificate).
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &[],
                false,
                "has no URI SAN (SPIFFE ID)",
            ),
            // Several URI SANs: any one matching is enough.
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &["urn:example:x", SHOPPER],
                true,
                &format!("URI SAN {SHOPPER} matches"),
            ),
            (
                &["spiffe://cluster.local/ns/shop/*"],
                &["urn:example:x", "spiffe://cluster.local/ns/bank/sa/a"],
                false,
                "no URI SAN matches",
            ),
            // Several patterns: the reason names them all.
            (
                &["spiffe://a/x", "spiffe://b/*"],
                &["spiffe://b/y"],
                true,
                "matches --allow-client spiffe://b/*",
            ),
            (
                &["spiffe://a/x", "spiffe://b/*"],
                &["spiffe://c/y"],
                false,
                "--allow-client spiffe://a/x, spiffe://b/*",
            ),
        ];
        for (patterns, sans, want, reason) in cases {
            let got = authorize(&strings(patterns), &strings(sans));
            assert_eq!(got.allowed, *want, "{patterns:?} {sans:?}: {got:?}");
            assert!(
                got.reason.contains(reason),
                "{patterns:?} {sans:?}: {got:?}"
            );
        }
    }

    #[test]
    fn patterns() {
        for ok in [
            "*",
            SHOPPER,
            "spiffe://cluster.local/ns/shop/*",
            "spiffe://td/*",
        ] {
            assert_eq!(parse_pattern(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "spiffe://td/*/sa/x",
            "*spiffe",
            "spiffe://td/**",
            "spiffe://td/ x",
            "a\nb",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
    }
}
