//! URL handling shared by the reporters and integrations: credentials never reach a span
//! name, a tag or a log line.

/// `host:port` of an authority, without any `user:password@`.
pub(crate) fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// `url` with any `user:password@` in its authority removed (for names, tags and logs).
pub(crate) fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = without_userinfo(&rest[..end]);
    if host.len() == end {
        return url.into();
    }
    format!("{scheme}://{host}{}", &rest[end..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_removed() {
        assert_eq!(redact_url("http://u:p@h:1/x?q"), "http://h:1/x?q");
        assert_eq!(redact_url("http://h:1/a@b"), "http://h:1/a@b");
        assert_eq!(without_userinfo("u:p@h:1"), "h:1");
    }
}
