// Back up this Windmill workspace to Git through windmill-git-sync.
//
// The settings resource (type c_windmill_git_sync) says where the service
// runs and where the backup goes; the tokens stay in secret variables and
// are read at run time. A failed backup fails this job (non-2xx answer), so
// Windmill's job list, error handler and schedule alerts show it.
import * as wmill from "windmill-client";

type CWindmillGitSync = {
  service_url: string;
  git_remote_url: string;
  git_branch?: string;
  path_prefix?: string;
  git_user_name?: string;
  git_user_email?: string;
  windmill_token_variable: string;
  git_token_variable: string;
  service_token_variable?: string;
};

export async function main(settings: CWindmillGitSync, workspace: string = "") {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (settings.service_token_variable) {
    headers["Authorization"] = `Bearer ${await wmill.getVariable(settings.service_token_variable)}`;
  }
  const body: Record<string, unknown> = {
    windmill_token: await wmill.getVariable(settings.windmill_token_variable),
    git_remote_url: settings.git_remote_url,
    git_token: await wmill.getVariable(settings.git_token_variable),
    workspace: workspace || process.env.WM_WORKSPACE,
  };
  for (const key of ["git_branch", "path_prefix", "git_user_name", "git_user_email"] as const) {
    if (settings[key]) body[key] = settings[key];
  }
  const response = await fetch(`${settings.service_url.replace(/\/$/, "")}/sync`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
  });
  const result = await response.json().catch(() => ({ message: response.statusText }));
  if (!response.ok) {
    throw new Error(`Backup failed (HTTP ${response.status}): ${result.message}`);
  }
  return result;
}
