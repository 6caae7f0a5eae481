//! Scenarios on the AWS backends: the environment that points `sluice` at DynamoDB Local and
//! moto, and the tables and queues of a run's own prefix.

use crate::args::EmulatorArgs;
use anyhow::bail;
use std::path::Path;

/// The environment of a `sluice` process on the emulators, under `prefix`.
pub fn env(a: &EmulatorArgs, prefix: &str, scenario: &str) -> anyhow::Result<Vec<(String, String)>> {
    let (Some(dynamodb), Some(moto)) = (&a.dynamodb_url, &a.moto_url) else {
        bail!(
            "{scenario} needs DynamoDB Local and moto: run it as `scripts/with-test-services.sh sluice-bench {scenario} ...` \
             (or give --dynamodb-url and --moto-url)"
        );
    };
    Ok([
        ("SLUICE_BACKEND", "aws"),
        ("SLUICE_HUB", "local"),
        ("SLUICE_RESOURCE_PREFIX", prefix),
        ("SLUICE_SQS_CLIENT_SIDE_WAIT", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.as_str()),
        ("AWS_ENDPOINT_URL_SQS", moto.as_str()),
        ("AWS_ENDPOINT_URL_KINESIS", a.kinesis_url.as_deref().unwrap_or(moto)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect())
}

/// `sluice migrate --with-queues` in that environment.
pub async fn migrate(program: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = tokio::process::Command::new(program)
        .args(["migrate", "--with-queues", "--data-dir"])
        .arg(dir.path())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await?;
    if !out.status.success() {
        bail!("sluice migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
