//! README (Reload): "`server.listen`, `storage.*`, `[tls]` and `[[pin]]` need a
//! restart: a change to them is logged as such and otherwise ignored." One reload that
//! changes several of them: one warning names each, the rest of the file is applied,
//! and the store stays where it was.

use std::time::Duration;

use crate::harness::acr::tls::TestCa;
use crate::harness::ferry::{FerryBuilder, LOCAL, Upstream};
use crate::harness::images::push_image_http;
use crate::harness::registry::{Registry, RegistryAuth};
use crate::harness::temp_dir;
use crate::support::files_under;

use super::stored;

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_names_each_setting_that_needs_a_restart_and_keeps_it() {
    let registry = Registry::start(RegistryAuth::None);
    let first = push_image_http(&registry, "team/first", "v1", &[20_000]);
    let later = push_image_http(&registry, "team/later", "v1", &[20_000]);
    let mut ferry = FerryBuilder::new()
        .upstream(Upstream::local(&registry.url()))
        .start();
    crate::support::pull_image(&ferry.url(), &first).await;

    let elsewhere = temp_dir("other-store");
    // A valid certificate pair for a `[tls]` listener added by the reload.
    let certs = temp_dir("reload-tls");
    let leaf = TestCa::generate(certs.path()).leaf(&["localhost", "127.0.0.1"]);
    let (cert, key) = (certs.path().join("tls.crt"), certs.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(
        &key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", leaf.key_pkcs8_der.clone())),
    )
    .unwrap();
    let root_line = format!("root = \"{}\"\n", ferry.storage_root().display());
    let text = ferry.config().to_owned();
    assert!(text.contains(&root_line), "{text}");
    let changed =
        text.replace(
            &root_line,
            &format!(
                "root = \"{}\"\nmax_size = \"1GiB\"\nscrub_rate = \"0\"\n",
                elsewhere.path().display()
            ),
        )
        .replace(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nheader_read_timeout = \"17s\"\n",
        )
        // A reloadable change beside them: applied.
        .replace(
            &format!("name = \"{LOCAL}\"\n"),
            &format!("name = \"{LOCAL}\"\ntag_ttl = \"5m\"\n"),
        ) + &format!(
            "\n[[pin]]\nimages = [\"{LOCAL}/team/first:v1\"]\n\n\
             [tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        );
    assert_ne!(changed, text);
    let mark = ferry.log().len();
    ferry.write_config(&changed);
    ferry.signal("HUP");

    let reloaded = ferry
        .wait_for_log(mark, &["configuration reloaded"], Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no reload line\n{}", &ferry.log()[mark..]));
    assert!(
        reloaded.contains("1 changed"),
        "the upstream's tag_ttl applied: {reloaded}"
    );
    let warnings = ferry.log_lines(mark, &["needs a restart"]);
    assert_eq!(warnings.len(), 1, "one line: {warnings:#?}");
    let warning = &warnings[0];
    assert!(warning.contains("WARN"), "a warning: {warning}");
    for key in [
        "storage.root",
        "storage.max_size",
        "storage.scrub_rate",
        "header_read_timeout",
        "pin",
        "tls",
    ] {
        assert!(warning.contains(key), "the line names {key}: {warning}");
    }
    assert!(
        !warning.contains("server.listen") && !warning.contains("min_free"),
        "only what changed: {warning}"
    );
    assert!(
        ferry.log_lines(mark, &["listening on https://"]).is_empty(),
        "a TLS listener started without a restart"
    );

    // Ignored until a restart: the store is where it was.
    crate::support::pull_image(&ferry.url(), &later).await;
    // The blob is renamed into place just after its last byte went out.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stored(&ferry, &later.largest_layer().digest) {
        assert!(
            std::time::Instant::now() < deadline,
            "not stored in the running root within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        files_under(elsewhere.path()).is_empty(),
        "the new root was used before a restart"
    );
    ferry.assert_running();
}
