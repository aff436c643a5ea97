//! `charter gov`: the member side of governance. Requests are COSE Sign1 messages signed with
//! the member's key, sent to CCF's `/gov/members/...` paths.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use charter_crypto::{
    cose_sign1, open_share, partial_decrypt, Certificate, DealtShare, RecoveryCiphertext,
    RecoveryKeyPair, SigningKey,
};
use charter_host::client::{Client, ClientResponse};

/// Where and as whom to send governance requests.
#[derive(clap::Args, Debug, Clone)]
pub struct MemberArgs {
    /// Sandbox workspace: its sandbox.json gives the node address, and it holds the PEM files.
    #[arg(long, default_value = "workspace/sandbox", global = true)]
    pub workspace: PathBuf,
    /// Member name in the workspace (memberN), used for `memberN_cert.pem` / `memberN_privk.pem`.
    #[arg(long, default_value = "member0", global = true)]
    pub member: String,
    /// Member certificate (overrides the workspace's).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Member private key (overrides the workspace's).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Node address (overrides sandbox.json).
    #[arg(long, global = true)]
    pub address: Option<SocketAddr>,
    /// Service certificate (overrides the workspace's).
    #[arg(long, global = true)]
    pub service_cert: Option<PathBuf>,
    /// Member's recovery private key (overrides the workspace's `memberN_enc_privk.pem`).
    #[arg(long, global = true)]
    pub recovery_key: Option<PathBuf>,
}

impl MemberArgs {
    /// The member's recovery private key file.
    pub fn recovery_key_path(&self) -> PathBuf {
        self.recovery_key.clone().unwrap_or_else(|| {
            self.workspace
                .join(format!("{}_enc_privk.pem", self.member))
        })
    }
}

/// `charter gov` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum GovCommand {
    /// Submit a proposal: a JSON file `{"actions": [{"name", "args"}]}`.
    Propose {
        /// The proposal file.
        file: PathBuf,
    },
    /// Vote on a proposal.
    Vote {
        /// Proposal ID.
        id: String,
        /// A ballot file: `export function vote(proposal, proposerId) { ... }`.
        #[arg(long, conflicts_with_all = ["accept", "reject"])]
        ballot: Option<PathBuf>,
        /// Vote for.
        #[arg(long, conflicts_with = "reject")]
        accept: bool,
        /// Vote against.
        #[arg(long)]
        reject: bool,
    },
    /// Withdraw one of your open proposals.
    Withdraw {
        /// Proposal ID.
        id: String,
    },
    /// Show one proposal (with its actions), or all.
    Show {
        /// Proposal ID.
        id: Option<String>,
    },
    /// Acknowledge the service state, turning an Accepted member Active.
    Ack,
    /// Recovery: decrypt this member's recovery share locally, compute a partial decryption
    /// with a proof, and submit it (signed). The share itself never leaves this machine.
    RecoveryShare,
    /// Recovery status: threshold, shares submitted, how many are missing.
    RecoveryStatus,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))
}

/// A member's connection to the service.
pub struct GovClient {
    client: Client,
    key: SigningKey,
    member_id: String,
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl GovClient {
    /// Connects as the member named by `args`.
    pub async fn connect(args: &MemberArgs) -> Result<GovClient, String> {
        let workspace = &args.workspace;
        let cert_path = args
            .cert
            .clone()
            .unwrap_or_else(|| workspace.join(format!("{}_cert.pem", args.member)));
        let key_path = args
            .key
            .clone()
            .unwrap_or_else(|| workspace.join(format!("{}_privk.pem", args.member)));
        let service_path = args
            .service_cert
            .clone()
            .unwrap_or_else(|| workspace.join("service_cert.pem"));
        let address = match args.address {
            Some(address) => address,
            None => {
                let sandbox: serde_json::Value =
                    serde_json::from_str(&read(&workspace.join("sandbox.json"))?)
                        .map_err(|error| format!("sandbox.json: {error}"))?;
                sandbox["nodes"][0]["rpc_address"]
                    .as_str()
                    .and_then(|text| text.parse().ok())
                    .ok_or("sandbox.json names no node address; pass --address")?
            }
        };
        GovClient::connect_to(
            address,
            &read(&service_path)?,
            &read(&cert_path)?,
            &read(&key_path)?,
        )
        .await
    }

    /// Connects to `address` with explicit PEM material.
    pub async fn connect_to(
        address: SocketAddr,
        service_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<GovClient, String> {
        charter_host::tls::install_crypto_provider();
        let cert = Certificate::from_pem(cert_pem)
            .map_err(|error| format!("member certificate: {error}"))?;
        let key = SigningKey::from_pem(key_pem).map_err(|error| format!("member key: {error}"))?;
        let tls = charter_host::tls::client_config(service_pem, Some((cert_pem, key_pem)))
            .map_err(|error| error.to_string())?;
        let client = Client::connect(address, &address.ip().to_string(), tls)
            .await
            .map_err(|error| format!("cannot connect to {address}: {error}"))?;
        Ok(GovClient {
            client,
            key,
            member_id: cert.fingerprint_hex(),
        })
    }

    /// This member's ID.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Sends a signed request and returns the JSON answer, or the error it carried.
    pub async fn signed(
        &mut self,
        path: &str,
        msg_type: &str,
        proposal_id: Option<&str>,
        payload: &[u8],
    ) -> Result<serde_json::Value, String> {
        let body = cose_sign1(
            &self.key,
            &self.member_id,
            msg_type,
            proposal_id,
            now_unix_s(),
            payload,
        );
        let response = self
            .client
            .request("POST", path, &[("content-type", "application/cose")], body)
            .await
            .map_err(|error| error.to_string())?;
        answer(response)
    }

    /// GETs a path and returns its JSON.
    pub async fn get(&mut self, path: &str) -> Result<serde_json::Value, String> {
        let response = self
            .client
            .request("GET", path, &[], Vec::new())
            .await
            .map_err(|error| error.to_string())?;
        answer(response)
    }

    /// Submits a proposal.
    pub async fn propose(&mut self, proposal: &[u8]) -> Result<serde_json::Value, String> {
        self.signed("/gov/members/proposals:create", "proposal", None, proposal)
            .await
    }

    /// Submits a ballot (JavaScript source of `vote`).
    pub async fn vote(
        &mut self,
        proposal_id: &str,
        ballot: &str,
    ) -> Result<serde_json::Value, String> {
        let path = format!(
            "/gov/members/proposals/{proposal_id}/ballots/{}:submit",
            self.member_id
        );
        let payload = serde_json::json!({"ballot": ballot}).to_string();
        self.signed(&path, "ballot", Some(proposal_id), payload.as_bytes())
            .await
    }

    /// Withdraws a proposal.
    pub async fn withdraw(&mut self, proposal_id: &str) -> Result<serde_json::Value, String> {
        let path = format!("/gov/members/proposals/{proposal_id}:withdraw");
        self.signed(&path, "withdrawal", Some(proposal_id), b"")
            .await
    }

    /// Submits this member's partial decryption for a recovery: fetches the member's encrypted
    /// share, opens it with `recovery_key` and proves the partial decryption correct.
    pub async fn submit_recovery_share(
        &mut self,
        recovery_key: &RecoveryKeyPair,
    ) -> Result<serde_json::Value, String> {
        let id = self.member_id.clone();
        let record = self.get(&format!("/gov/recovery/shares/{id}")).await?;
        let field = |name: &str| -> Result<Vec<u8>, String> {
            record[name]
                .as_str()
                .and_then(|text| hex::decode(text).ok())
                .ok_or_else(|| format!("the share record's {name} is missing or not hex"))
        };
        let ciphertext = RecoveryCiphertext::from_bytes(&field("ciphertext")?)
            .map_err(|error| error.to_string())?;
        let verification_key: [u8; 32] = field("verificationKey")?
            .try_into()
            .map_err(|_| "the verification key is not 32 bytes".to_owned())?;
        let index = record["index"]
            .as_u64()
            .and_then(|index| u32::try_from(index).ok())
            .ok_or("the share record has no index")?;
        let dealt = DealtShare {
            index,
            verification_key,
            encrypted_share: field("encryptedShare")?,
        };
        let share = open_share(recovery_key, &ciphertext, &dealt).map_err(|error| {
            format!("cannot open member {id}'s share with this recovery key: {error}")
        })?;
        let partial = partial_decrypt(&share, &ciphertext, &mut rand_core::OsRng);
        let payload =
            serde_json::json!({"partial_decryption": hex::encode(partial.to_bytes())}).to_string();
        self.signed(
            &format!("/gov/recovery/members/{id}:recover"),
            "recovery_share",
            None,
            payload.as_bytes(),
        )
        .await
    }

    /// Fetches and acknowledges the state digest.
    pub async fn ack(&mut self) -> Result<serde_json::Value, String> {
        let id = self.member_id.clone();
        let digest = self
            .signed(
                &format!("/gov/members/state-digests/{id}:update"),
                "state_digest",
                None,
                b"",
            )
            .await?;
        let payload = serde_json::json!({"stateDigest": digest["stateDigest"]}).to_string();
        self.signed(
            &format!("/gov/members/state-digests/{id}:ack"),
            "ack",
            None,
            payload.as_bytes(),
        )
        .await
    }
}

fn answer(response: ClientResponse) -> Result<serde_json::Value, String> {
    let json = if response.body.is_empty() {
        serde_json::Value::Null
    } else {
        response.json().unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&response.body).into_owned())
        })
    };
    if (200..300).contains(&response.status) {
        Ok(json)
    } else {
        let message = json["error"]["message"]
            .as_str()
            .map_or_else(|| json.to_string(), str::to_owned);
        let code = json["error"]["code"].as_str().unwrap_or("Error");
        Err(format!("{} {code}: {message}", response.status))
    }
}

/// A ballot that votes for.
pub const ACCEPT_BALLOT: &str = "export function vote(proposal, proposerId) { return true; }";
/// A ballot that votes against.
pub const REJECT_BALLOT: &str = "export function vote(proposal, proposerId) { return false; }";

/// Runs a `charter gov` subcommand.
pub fn run(args: MemberArgs, command: GovCommand) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())?;
    runtime.block_on(async move {
        let mut client = GovClient::connect(&args).await?;
        let result = match command {
            GovCommand::Propose { file } => {
                let proposal =
                    std::fs::read(&file).map_err(|error| format!("{}: {error}", file.display()))?;
                client.propose(&proposal).await?
            }
            GovCommand::Vote {
                id,
                ballot,
                accept,
                reject,
            } => {
                let source = match (ballot, accept, reject) {
                    (Some(path), _, _) => read(&path)?,
                    (None, true, _) => ACCEPT_BALLOT.to_owned(),
                    (None, _, true) => REJECT_BALLOT.to_owned(),
                    (None, false, false) => {
                        return Err("say --accept, --reject or --ballot FILE".to_owned())
                    }
                };
                client.vote(&id, &source).await?
            }
            GovCommand::Withdraw { id } => client.withdraw(&id).await?,
            GovCommand::Show { id: Some(id) } => {
                let mut summary = client.get(&format!("/gov/members/proposals/{id}")).await?;
                summary["actions"] = client
                    .get(&format!("/gov/members/proposals/{id}/actions"))
                    .await?;
                summary
            }
            GovCommand::Show { id: None } => client.get("/gov/members/proposals").await?,
            GovCommand::Ack => client.ack().await?,
            GovCommand::RecoveryShare => {
                let path = args.recovery_key_path();
                let key = RecoveryKeyPair::from_pem(&read(&path)?)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                client.submit_recovery_share(&key).await?
            }
            GovCommand::RecoveryStatus => client.get("/gov/recovery/status").await?,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&result).map_err(|error| error.to_string())?
        );
        Ok(())
    })
}
