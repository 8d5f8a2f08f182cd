# Terraform and provider versions. After the first `terraform init`, commit the
# generated .terraform.lock.hcl: it pins the exact provider build and its checksums.
terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.14"
    }
  }

  # Keep the state remote and locked in a team setting, e.g.:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "analytics-platform/production.tfstate"
  #   region       = "eu-central-1"
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(
      {
        Project     = var.project
        Environment = var.environment
        ManagedBy   = "terraform"
      },
      var.tags,
    )
  }
}
