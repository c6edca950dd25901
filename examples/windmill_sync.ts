// Windmill script (Bun/TypeScript): back up this workspace to Git.
//
// Create it in Windmill (e.g. as f/admin/git_backup), store the two tokens
// as secret variables, and schedule it. A failed backup fails this job, so
// Windmill's job list and error handlers show it.
import * as wmill from "windmill-client";

export async function main(
  git_remote_url: string,                 // e.g. https://github.com/acme/windmill-backup.git
  git_branch: string = "main",
  workspace: string = Bun.env.WM_WORKSPACE ?? "admins",
  windmill_token_path: string = "u/admin/windmill_token",  // secret variable with a Windmill token
  git_token_path: string = "u/admin/git_token",            // secret variable with a Git PAT
  service_url: string = "http://windmill-git-sync:8080",
  git_user_name: string = "Windmill Git Sync",
  git_user_email: string = "windmill@example.com",
  service_token_path: string = "",  // secret variable with the service's SYNC_AUTH_TOKEN_FILE token, if set
) {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (service_token_path) {
    headers["Authorization"] = `Bearer ${await wmill.getVariable(service_token_path)}`;
  }
  const response = await fetch(`${service_url}/sync`, {
    method: "POST",
    headers,
    body: JSON.stringify({
      windmill_token: await wmill.getVariable(windmill_token_path),
      git_remote_url,
      git_token: await wmill.getVariable(git_token_path),
      workspace,
      git_branch,
      git_user_name,
      git_user_email,
    }),
  });
  const result = await response.json().catch(() => ({ message: response.statusText }));
  if (!response.ok) {
    throw new Error(`Backup failed (HTTP ${response.status}): ${result.message}`);
  }
  return result;
}
