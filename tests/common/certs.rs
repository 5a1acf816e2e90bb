//! Certificates made in the test: a CA and server certificates it signs (rcgen), written as
//! PEM files into a temporary folder.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

/// A test CA and where its PEM file is.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate chain and key, as files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tmp");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pinhole test CA");
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, issuer.pem()).expect("write CA");
        TestCa {
            dir,
            ca_pem,
            issuer,
        }
    }

    /// A certificate for `name` and 127.0.0.1, written as `<file>.pem` and `<file>.key`.
    pub fn server(&self, name: &str, file: &str) -> ServerCert {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let out = ServerCert {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        // Write both through temporary names, so that a reader never sees half a file.
        let tmp_cert = out.cert.with_extension("pem.tmp");
        let tmp_key = out.key.with_extension("key.tmp");
        std::fs::write(&tmp_cert, cert.pem()).expect("write cert");
        std::fs::write(&tmp_key, key.serialize_pem()).expect("write key");
        std::fs::rename(&tmp_key, &out.key).expect("rename key");
        std::fs::rename(&tmp_cert, &out.cert).expect("rename cert");
        out
    }
}
