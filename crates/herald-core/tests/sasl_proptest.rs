//! Property tests: the SCRAM server and PLAIN parser never panic on arbitrary input.

use herald_core::sasl::{parse_plain, ChannelBinding, ScramCredential, ScramHash, ScramServer};
use proptest::prelude::*;
use std::sync::OnceLock;

fn cred() -> &'static ScramCredential {
    static C: OnceLock<ScramCredential> = OnceLock::new();
    C.get_or_init(|| ScramCredential::derive(ScramHash::Sha256, "pencil", 16).unwrap())
}

fn server(plus: bool) -> ScramServer {
    ScramServer::new(
        ScramHash::Sha256,
        plus,
        ChannelBinding {
            tls_exporter: Some(vec![1; 32]),
            tls_server_end_point: None,
        },
        true,
    )
}

/// Byte strings that look like SCRAM messages often enough to get past the first checks.
fn scramish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"n,,".to_vec()),
        Just(b"y,,".to_vec()),
        Just(b"p=tls-exporter,,".to_vec()),
        Just(b"n=".to_vec()),
        Just(b"r=".to_vec()),
        Just(b"c=".to_vec()),
        Just(b"p=".to_vec()),
        Just(b"a=".to_vec()),
        Just(b"m=".to_vec()),
        Just(b"=2C".to_vec()),
        Just(b"=3D".to_vec()),
        Just(b"biws".to_vec()),
        Just(b",".to_vec()),
        Just(b"=".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(token, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn client_first_never_panics(msg in prop_oneof![any::<Vec<u8>>(), scramish()], plus in any::<bool>()) {
        let mut s = server(plus);
        let _ = s.client_first(&msg);
        let _ = s.server_first(None);
        let _ = s.client_final(&msg);
    }

    #[test]
    fn client_final_never_panics(msg in prop_oneof![any::<Vec<u8>>(), scramish()], known in any::<bool>()) {
        let mut s = server(false).with_server_nonce("SRV");
        s.client_first(b"n,,n=user,r=CLI").unwrap();
        let sf = s.server_first(known.then(cred));
        prop_assert!(!sf.is_empty());
        let _ = s.client_final(&msg);
        // A second attempt is always refused.
        prop_assert!(s.client_final(&msg).is_err());
    }

    #[test]
    fn client_final_with_valid_prefix_never_panics(tail in scramish()) {
        let mut s = server(true).with_server_nonce("SRV");
        s.client_first(b"p=tls-exporter,,n=user,r=CLI").unwrap();
        s.server_first(Some(cred()));
        let mut msg = b"c=cD10bHMtZXhwb3J0ZXIsLA==,r=CLISRV,".to_vec();
        msg.extend_from_slice(&tail);
        prop_assert!(s.client_final(&msg).is_err());
    }

    #[test]
    fn plain_never_panics(msg in any::<Vec<u8>>()) {
        let _ = parse_plain(&msg);
    }
}
