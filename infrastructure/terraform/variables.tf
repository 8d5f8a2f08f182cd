variable "region" {
  description = "AWS region of the snapshot bucket (the services' S3_REGION)."
  type        = string
}

variable "bucket_name" {
  description = "Globally unique name of the snapshot bucket (the bucket in STORAGE_URL)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "S3 bucket names are 3-63 characters: lowercase letters, digits, dots and hyphens."
  }
}

variable "object_prefix" {
  description = "Key prefix inside the bucket (the prefix in STORAGE_URL); empty for a dedicated bucket."
  type        = string
  default     = ""

  validation {
    condition     = !startswith(var.object_prefix, "/") && !strcontains(var.object_prefix, "..")
    error_message = "object_prefix is relative (no leading slash) and has no '..'."
  }
}

variable "project" {
  description = "Name used for IAM users and policies, and as a tag."
  type        = string
  default     = "analytics-platform"
}

variable "environment" {
  description = "Environment name used in IAM names and tags (production, staging, ...)."
  type        = string
  default     = "production"
}

variable "history_noncurrent_days" {
  description = "Days a snapshot stays restorable (as a noncurrent version) after the ETL's retention deletes it from history/."
  type        = number
  default     = 30
}

variable "current_noncurrent_days" {
  description = "Days overwritten versions of current/ (manifest, convenience copy) are kept. The ETL rewrites them every cycle."
  type        = number
  default     = 2
}

variable "log_retention_days" {
  description = "Days the per-run logs under logs/ are kept."
  type        = number
  default     = 30
}

variable "abort_incomplete_upload_days" {
  description = "Days after which unfinished multipart uploads (crashed uploads) are removed."
  type        = number
  default     = 1
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for SSE-KMS; null uses SSE-S3 (AES-256, no key policy to manage)."
  type        = string
  default     = null
}

variable "create_iam_users" {
  description = "Create IAM users for the ETL and the API (for platforms outside AWS, such as Railway). Access keys are created outside Terraform so they never land in the state."
  type        = bool
  default     = true
}

variable "etl_role_names" {
  description = "Existing IAM roles (ECS tasks, EC2 instances, ...) that get the ETL's policy."
  type        = list(string)
  default     = []
}

variable "api_role_names" {
  description = "Existing IAM roles that get the API's read-only policy."
  type        = list(string)
  default     = []
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete a bucket that still holds snapshots."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
