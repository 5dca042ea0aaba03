use super::*;

fn ok(ip: &str, deny_private: bool) -> bool {
    check_ip(ip.parse().unwrap(), deny_private).is_ok()
}

fn url_ok(url: &str, deny_private: bool) -> Result<(), EgressDenied> {
    let parsed = Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    check_url(&parsed, deny_private)
}

/// 169.254.169.254 as the ways an IPv6 address can carry it.
const METADATA_IN_IPV6: &[&str] = &[
    "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe",
    "::a9fe:a9fe",
    "::169.254.169.254",
    "::ffff:0:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::169.254.169.254",
    // NAT64 local use at each RFC 6052 position: /96, /64, /56, /48.
    "64:ff9b:1::a9fe:a9fe",
    "64:ff9b:1:0:a9:fea9:fe00:0",
    "64:ff9b:1:a9:fe:a9fe::",
    "64:ff9b:1:a9fe:a9:fe00::",
    "2002:a9fe:a9fe::1",
    // Teredo: server 65.54.227.120, client 169.254.169.254 stored inverted.
    "2001:0:4136:e378:8000:63bf:5601:5601",
];

#[test]
fn metadata_link_local_unspecified_and_multicast_are_always_refused() {
    for ip in [
        "169.254.169.254",
        "169.254.0.1",
        "100.100.100.200",
        "168.63.129.16",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "fe80::1",
        "febf::1",
        "fd00:ec2::254",
        "fd20:ce::254",
        "::",
        "ff02::1",
    ]
    .iter()
    .chain(METADATA_IN_IPV6)
    {
        assert!(!ok(ip, false), "{ip} refused");
        assert!(!ok(ip, true), "{ip} refused");
    }
}

#[test]
fn an_ipv6_address_is_judged_by_the_ipv4_address_it_carries() {
    let e = check_ip("64:ff9b::a9fe:a9fe".parse().unwrap(), false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "64:ff9b::a9fe:a9fe carries 169.254.169.254 (NAT64, 64:ff9b::/96), which is link-local \
         (169.254.0.0/16), where cloud metadata services answer (169.254.169.254 on AWS, GCP, \
         Azure, OpenStack, ...): always refused"
    );
    // A metadata address inside a private range is refused as metadata, whatever the setting.
    let e = check_ip("::ffff:100.100.100.200".parse().unwrap(), false).unwrap_err();
    assert!(e.to_string().contains("Alibaba"), "{e}");
    let e = check_ip("fd00:ec2::254".parse().unwrap(), true).unwrap_err();
    assert!(e.to_string().contains("AWS metadata"), "{e}");
    // Private IPv4 addresses carried in IPv6 follow the setting.
    for ip in [
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "::10.1.2.3",
        "64:ff9b::192.168.1.1",
        "64:ff9b:1::7f00:1",
        "2002:c0a8:101::1",
        "2002:6440:1::",
    ] {
        assert!(ok(ip, false), "{ip} allowed by default");
        assert!(
            !ok(ip, true),
            "{ip} refused when private networks are denied"
        );
    }
    for ip in [
        "64:ff9b::8.8.8.8",
        "64:ff9b:1::808:808",
        "64:ff9b:1:808:8:800::",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    ] {
        assert!(ok(ip, true), "{ip} carries a public address");
    }
}

#[test]
fn private_networks_follow_the_setting_and_public_ones_pass() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "100.127.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.9",
        "198.18.0.1",
        "240.0.0.1",
        "::1",
        "fd00::1",
        "fc00::1",
        "fec0::1",
        "100::1",
        "2001:2::1",
        "2001:db8::1",
        "3fff::1",
    ] {
        assert!(ok(ip, false), "{ip} allowed by default");
        assert!(
            !ok(ip, true),
            "{ip} refused when private networks are denied"
        );
    }
    for ip in [
        "8.8.8.8",
        "1.1.1.1",
        "172.32.0.1",
        "100.128.0.1",
        "169.255.0.1",
        "168.63.129.17",
        "2606:4700::1111",
        "2a00:1450:4001::200e",
    ] {
        assert!(ok(ip, true), "{ip} is public");
    }
}

#[test]
fn every_url_spelling_of_a_metadata_address_is_refused() {
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://0xA9FEA9FE/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://0251.0376.0251.0376/",
        "http://0251.254.0xa9.254/",
        "http://169.254.43518/",
        "http://169.16689662/",
        "http://169.254.169.254./",
        "http://%31%36%39.254.169.254/",
        "http://\u{ff11}\u{ff16}\u{ff19}\u{ff0e}254.169.254/",
        "https://169.254.169.254:443/",
        "http://100.100.100.200/",
        "http://1684301000/",
        "http://0x646464C8/",
        "http://168.63.129.16/machine?comp=goalstate",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[FD00:EC2:0:0:0:0:0:254]/",
        "http://[fd20:ce::254]/",
        "http://[fe80::a9fe:a9fe]/",
        "http://0/",
        "http://0.0.0.0:8080/",
        "http://[::]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata.google.internal./",
        "http://METADATA.Google.Internal./",
        "http://instance-data.ec2.internal/",
    ] {
        assert!(url_ok(url, false).is_err(), "{url} refused");
    }
    for ip in METADATA_IN_IPV6 {
        let url = format!("http://[{ip}]/");
        let e = url_ok(&url, false).expect_err(&url);
        assert!(e.to_string().contains("169.254.169.254"), "{url}: {e}");
    }
    // Zone ids are not URLs at all, so they cannot reach a link-local interface.
    assert!(Url::parse("http://[fe80::1%25eth0]/").is_err());
}

#[test]
fn url_spellings_of_private_addresses_follow_the_setting() {
    for url in [
        "http://127.0.0.1:8080/",
        "http://127.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://2130706433/",
        "http://10.0.0.1./",
        "http://[::1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::10.0.0.1]/",
        "http://100.64.0.1/",
    ] {
        assert!(url_ok(url, false).is_ok(), "{url} allowed by default");
        assert!(url_ok(url, true).is_err(), "{url} refused when denied");
    }
    for url in [
        "http://example.com/hook",
        "https://8.8.8.8/",
        "http://134744072/",
        "http://[2606:4700::1111]/",
        // Names are judged by what they resolve to (in the resolver), not here.
        "http://localhost./",
    ] {
        assert!(url_ok(url, true).is_ok(), "{url}");
    }
}

#[test]
fn a_refusal_at_creation_names_the_url_and_the_address_and_is_counted() {
    let policy = EgressPolicy::new(false);
    let e = policy.check_new_endpoint("http://0xA9FEA9FE/").unwrap_err();
    assert!(e.contains("`http://0xA9FEA9FE/`"), "{e}");
    assert!(e.contains("169.254.169.254 is link-local"), "{e}");
    assert!(e.contains("always refused"), "{e}");
    assert!(policy.check_new_endpoint("http://10.0.0.1/").is_ok());
    assert!(policy.check_new_endpoint("not a url").is_ok());
    let strict = EgressPolicy::new(true);
    let e = strict.check_new_endpoint("http://10.0.0.1/").unwrap_err();
    assert!(e.contains("push_deny_private_networks"), "{e}");
    assert_eq!(policy.counters.refused_at_create.load(Ordering::Relaxed), 1);
    assert_eq!(strict.counters.refused_at_create.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_name_that_resolves_to_a_refused_address_fails_with_the_reason() {
    let r = GuardedResolver::new(false)
        .with_override("metadata.test", vec!["169.254.169.254".parse().unwrap()])
        .with_override("nat64.test", vec!["64:ff9b::a9fe:a9fe".parse().unwrap()])
        .with_override(
            "mixed.test",
            vec!["169.254.1.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        );
    for (name, addr) in [
        ("metadata.test", "169.254.169.254"),
        ("nat64.test", "64:ff9b::a9fe:a9fe"),
    ] {
        let err = match r.resolve(name.parse().unwrap()).await {
            Err(e) => e,
            Ok(_) => panic!("{name}: a metadata address must not resolve"),
        };
        let denied = err.downcast_ref::<EgressDenied>().expect("typed reason");
        assert_eq!(denied.addr(), Some(addr.parse::<IpAddr>().unwrap()));
    }
    let left: Vec<_> = match r.resolve("mixed.test".parse().unwrap()).await {
        Ok(a) => a.collect(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(left, vec!["127.0.0.1:0".parse().unwrap()]);
    // Metadata names are refused before DNS is asked (an override would answer otherwise).
    let named = GuardedResolver::new(false).with_override(
        "metadata.google.internal.",
        vec!["8.8.8.8".parse().unwrap()],
    );
    match named
        .resolve("metadata.google.internal.".parse().unwrap())
        .await
    {
        Err(e) => assert!(e.downcast_ref::<EgressDenied>().is_some(), "{e}"),
        Ok(_) => panic!("a metadata name must not resolve"),
    }
    let strict = GuardedResolver::new(true);
    for name in ["localhost", "localhost."] {
        assert!(
            strict.resolve(name.parse().unwrap()).await.is_err(),
            "{name}"
        );
    }
}
