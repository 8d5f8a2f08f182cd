# Least privilege for the two services, limited to the bucket's object_prefix.
#
# ETL: lists, reads, writes and deletes (snapshot retention) under the prefix.
# API: lists and reads under the prefix, nothing else. It needs s3:ListBucket so
# a missing key answers 404 (no snapshot yet) instead of 403 (looks like a
# permission problem).

data "aws_iam_policy_document" "etl" {
  statement {
    sid       = "ListSnapshotPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.snapshots.arn]

    dynamic "condition" {
      for_each = local.prefix == "" ? [] : [local.key_prefix]
      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${condition.value}*"]
      }
    }
  }

  statement {
    sid = "ReadWriteSnapshots"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = local.use_kms ? [var.kms_key_arn] : []
    content {
      sid       = "UseSnapshotKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "api" {
  statement {
    sid       = "ListSnapshotPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.snapshots.arn]

    dynamic "condition" {
      for_each = local.prefix == "" ? [] : [local.key_prefix]
      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${condition.value}*"]
      }
    }
  }

  statement {
    sid       = "ReadSnapshots"
    actions   = ["s3:GetObject"]
    resources = [local.objects_arn]
  }

  dynamic "statement" {
    for_each = local.use_kms ? [var.kms_key_arn] : []
    content {
      sid       = "DecryptSnapshots"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "etl" {
  name        = "${var.project}-${var.environment}-etl-s3"
  description = "analytics-etl: read/write/delete snapshots under s3://${var.bucket_name}/${local.key_prefix}"
  policy      = data.aws_iam_policy_document.etl.json
}

resource "aws_iam_policy" "api" {
  name        = "${var.project}-${var.environment}-api-s3-read"
  description = "analytics-api: read-only access to snapshots under s3://${var.bucket_name}/${local.key_prefix}"
  policy      = data.aws_iam_policy_document.api.json
}

# Users for platforms outside AWS (Railway). Create their access keys with
# `aws iam create-access-key --user-name <name>` (see docs/deployment-guide.md),
# so the secrets never enter the Terraform state.
resource "aws_iam_user" "etl" {
  count = var.create_iam_users ? 1 : 0
  name  = "${var.project}-${var.environment}-etl"
}

resource "aws_iam_user" "api" {
  count = var.create_iam_users ? 1 : 0
  name  = "${var.project}-${var.environment}-api"
}

resource "aws_iam_user_policy_attachment" "etl" {
  count      = var.create_iam_users ? 1 : 0
  user       = aws_iam_user.etl[0].name
  policy_arn = aws_iam_policy.etl.arn
}

resource "aws_iam_user_policy_attachment" "api" {
  count      = var.create_iam_users ? 1 : 0
  user       = aws_iam_user.api[0].name
  policy_arn = aws_iam_policy.api.arn
}

# Workloads running in AWS use roles instead of keys.
resource "aws_iam_role_policy_attachment" "etl" {
  for_each   = toset(var.etl_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.etl.arn
}

resource "aws_iam_role_policy_attachment" "api" {
  for_each   = toset(var.api_role_names)
  role       = each.value
  policy_arn = aws_iam_policy.api.arn
}
