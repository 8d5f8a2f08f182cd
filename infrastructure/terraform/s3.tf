# The snapshot bucket. Layout (under the optional object_prefix):
#   history/analytics_<version>.db[.zst]  immutable snapshots; the ETL keeps the last N
#   history/analytics_<version>.json      each version's manifest (for rollback)
#   current/manifest.json                 the commit point (rewritten on each publish)
#   current/analytics.db                  convenience copy (rewritten on each publish)
#   logs/etl_sync_<date>/...              per-run JSON logs

locals {
  prefix      = trim(var.object_prefix, "/")
  key_prefix  = local.prefix == "" ? "" : "${local.prefix}/"
  objects_arn = "${aws_s3_bucket.snapshots.arn}/${local.key_prefix}*"
  use_kms     = var.kms_key_arn != null
  storage_url = "s3://${var.bucket_name}${local.prefix == "" ? "" : "/${local.prefix}"}"
}

resource "aws_s3_bucket" "snapshots" {
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning turns every delete or overwrite into a noncurrent version: a
# snapshot pruned by the ETL, or a manifest overwritten by a bad publish, can
# be restored until the lifecycle rules below expire it.
resource "aws_s3_bucket_versioning" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = local.use_kms ? "aws:kms" : "AES256"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = local.use_kms
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  # Lifecycle rules on noncurrent versions need versioning in place first.
  depends_on = [aws_s3_bucket_versioning.snapshots]

  # Current snapshots are never expired here: the ETL's retention decides, and
  # it never deletes the one the manifest names (even if the ETL stops for weeks).
  rule {
    id     = "history-noncurrent"
    status = "Enabled"

    filter {
      prefix = "${local.key_prefix}history/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.history_noncurrent_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_upload_days
    }
  }

  rule {
    id     = "current-noncurrent"
    status = "Enabled"

    filter {
      prefix = "${local.key_prefix}current/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.current_noncurrent_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_upload_days
    }
  }

  rule {
    id     = "logs"
    status = "Enabled"

    filter {
      prefix = "${local.key_prefix}logs/"
    }

    expiration {
      days = var.log_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_upload_days
    }
  }

  # Delete markers whose versions have all expired are clutter; remove them.
  rule {
    id     = "expired-delete-markers"
    status = "Enabled"

    filter {
      prefix = local.key_prefix
    }

    expiration {
      expired_object_delete_marker = true
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.snapshots.arn,
      "${aws_s3_bucket.snapshots.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  policy = data.aws_iam_policy_document.bucket.json

  depends_on = [aws_s3_bucket_public_access_block.snapshots]
}
