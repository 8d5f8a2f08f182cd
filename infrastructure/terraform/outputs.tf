output "bucket_name" {
  description = "The snapshot bucket."
  value       = aws_s3_bucket.snapshots.bucket
}

output "bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = aws_s3_bucket.snapshots.arn
}

output "storage_url" {
  description = "STORAGE_URL for both services."
  value       = local.storage_url
}

output "region" {
  description = "S3_REGION for both services."
  value       = var.region
}

output "etl_policy_arn" {
  description = "The ETL's S3 policy (read/write/delete under the prefix)."
  value       = aws_iam_policy.etl.arn
}

output "api_policy_arn" {
  description = "The API's S3 policy (read-only under the prefix)."
  value       = aws_iam_policy.api.arn
}

output "etl_user_name" {
  description = "IAM user for the ETL (create its access key outside Terraform); null when create_iam_users is false."
  value       = one(aws_iam_user.etl[*].name)
}

output "api_user_name" {
  description = "IAM user for the API (create its access key outside Terraform); null when create_iam_users is false."
  value       = one(aws_iam_user.api[*].name)
}

output "service_environment" {
  description = "Variables both services need for this bucket (plus AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of their own user)."
  value = {
    STORAGE_URL = local.storage_url
    S3_REGION   = var.region
  }
}
