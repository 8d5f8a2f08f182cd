-- Prepares a SQL Server database as a source for analytics-etl.
--
-- What it does (idempotent: run it again after adding a table or to rotate
-- the ETL password):
--   1. Creates the five seed tables (inventory, products, orders, transactions,
--      customers; the columns of etl_service/demo_source.py) when they are missing.
--   2. Gives every one of them an `updated_at DATETIME2(7) NOT NULL` column kept
--      by the database: a SYSUTCDATETIME() default, an AFTER INSERT, UPDATE
--      trigger that stamps every written row, and an index for the ETL's
--      `updated_at >= watermark` range reads. Existing tables get the column
--      added, or widened from DATETIME/SMALLDATETIME to DATETIME2(7).
--   3. Turns ALLOW_SNAPSHOT_ISOLATION on, so the ETL can read under SNAPSHOT
--      isolation: transactionally consistent reads that never block writers.
--   4. Creates a read-only login and database user for the ETL (SELECT on the
--      five tables through the role analytics_etl_reader; writes, DDL and
--      EXECUTE explicitly denied on schema dbo).
--
-- Requirements: SQL Server 2017 or later (or Azure SQL Managed Instance),
-- run by a login that may create logins and alter the database (sysadmin, or
-- securityadmin plus db_owner of the database).
--
-- Run with sqlcmd (the three variables are required):
--   sqlcmd -S host,1433 -U admin_login -C -b -i etl-service/scripts/setup_database.sql
--          -v DATABASE_NAME=analytics_source ETL_LOGIN=analytics_etl ETL_PASSWORD="..."
-- (one line). ETL_PASSWORD must satisfy the server's password policy and must
-- not contain a single quote. Then give the ETL MSSQL_USERNAME=ETL_LOGIN and
-- MSSQL_PASSWORD=ETL_PASSWORD.
--
-- Before running it on large production tables: adding or widening
-- `updated_at` and building its index touch every row; do it in a
-- maintenance window. Any other index that contains `updated_at` blocks the
-- widening (the script stops and names it): drop it, run the script, recreate it.
--
-- The trigger always writes the server's UTC time, even when the application
-- sets updated_at itself, so the ETL's watermark follows one clock. Deletes
-- are not visible through updated_at; the ETL reconciles primary keys for that.
--
-- Azure SQL Database: CREATE LOGIN runs in master there; create the user as a
-- contained user instead (CREATE USER [analytics_etl] WITH PASSWORD = '...')
-- and run the rest of this script in the user database.

:on error exit
SET NOCOUNT ON;
GO

USE [$(DATABASE_NAME)];
GO

------------------------------------------------------------------------------
-- 1. The seed tables (created only when missing).
------------------------------------------------------------------------------
IF OBJECT_ID(N'dbo.products', N'U') IS NULL
    CREATE TABLE dbo.products (
        id INT NOT NULL CONSTRAINT PK_products PRIMARY KEY,
        sku NVARCHAR(32) NOT NULL CONSTRAINT UQ_products_sku UNIQUE,
        name NVARCHAR(200) NOT NULL,
        category NVARCHAR(50) NOT NULL,
        unit_price DECIMAL(12, 2) NOT NULL,
        active BIT NOT NULL,
        created_at DATETIME2(7) NOT NULL CONSTRAINT DF_products_created_at DEFAULT SYSUTCDATETIME(),
        updated_at DATETIME2(7) NOT NULL CONSTRAINT DF_products_updated_at DEFAULT SYSUTCDATETIME()
    );
GO

IF OBJECT_ID(N'dbo.inventory', N'U') IS NULL
    CREATE TABLE dbo.inventory (
        id INT NOT NULL CONSTRAINT PK_inventory PRIMARY KEY,
        product_id INT NOT NULL,
        warehouse NVARCHAR(16) NOT NULL,
        quantity INT NOT NULL,
        reorder_level INT NOT NULL,
        created_at DATETIME2(7) NOT NULL CONSTRAINT DF_inventory_created_at DEFAULT SYSUTCDATETIME(),
        updated_at DATETIME2(7) NOT NULL CONSTRAINT DF_inventory_updated_at DEFAULT SYSUTCDATETIME()
    );
GO

IF OBJECT_ID(N'dbo.customers', N'U') IS NULL
    CREATE TABLE dbo.customers (
        id INT NOT NULL CONSTRAINT PK_customers PRIMARY KEY,
        email NVARCHAR(200) NOT NULL,
        full_name NVARCHAR(200) NOT NULL,
        country NVARCHAR(2) NOT NULL,
        segment NVARCHAR(20) NOT NULL,
        created_at DATETIME2(7) NOT NULL CONSTRAINT DF_customers_created_at DEFAULT SYSUTCDATETIME(),
        updated_at DATETIME2(7) NOT NULL CONSTRAINT DF_customers_updated_at DEFAULT SYSUTCDATETIME()
    );
GO

IF OBJECT_ID(N'dbo.orders', N'U') IS NULL
    CREATE TABLE dbo.orders (
        id INT NOT NULL CONSTRAINT PK_orders PRIMARY KEY,
        customer_id INT NOT NULL,
        status NVARCHAR(16) NOT NULL,
        total_amount DECIMAL(12, 2) NOT NULL,
        currency NVARCHAR(3) NOT NULL,
        created_at DATETIME2(7) NOT NULL CONSTRAINT DF_orders_created_at DEFAULT SYSUTCDATETIME(),
        updated_at DATETIME2(7) NOT NULL CONSTRAINT DF_orders_updated_at DEFAULT SYSUTCDATETIME()
    );
GO

IF OBJECT_ID(N'dbo.transactions', N'U') IS NULL
    CREATE TABLE dbo.transactions (
        id INT NOT NULL CONSTRAINT PK_transactions PRIMARY KEY,
        order_id INT NOT NULL,
        amount DECIMAL(12, 2) NOT NULL,
        payment_method NVARCHAR(20) NOT NULL,
        status NVARCHAR(16) NOT NULL,
        created_at DATETIME2(7) NOT NULL CONSTRAINT DF_transactions_created_at DEFAULT SYSUTCDATETIME(),
        updated_at DATETIME2(7) NOT NULL CONSTRAINT DF_transactions_updated_at DEFAULT SYSUTCDATETIME()
    );
GO

------------------------------------------------------------------------------
-- 2. updated_at: column, default, index and trigger, for each table listed in
--    @tables (add a table name there to prepare another table the same way).
------------------------------------------------------------------------------
DECLARE @tables TABLE (ordinal INT IDENTITY PRIMARY KEY, name SYSNAME NOT NULL);
INSERT INTO @tables (name)
VALUES (N'products'), (N'inventory'), (N'customers'), (N'orders'), (N'transactions');

DECLARE @i INT = 1;
DECLARE @table SYSNAME;
DECLARE @qualified NVARCHAR(400);
DECLARE @object_id INT;
DECLARE @sql NVARCHAR(MAX);
DECLARE @name SYSNAME;
DECLARE @list NVARCHAR(MAX);
DECLARE @message NVARCHAR(2048);

WHILE @i <= (SELECT MAX(ordinal) FROM @tables)
BEGIN
    SELECT @table = name FROM @tables WHERE ordinal = @i;
    SET @i += 1;
    SET @qualified = N'dbo.' + QUOTENAME(@table);
    SET @object_id = OBJECT_ID(@qualified, N'U');

    IF @object_id IS NULL
    BEGIN
        SET @message = CONCAT(N'table ', @qualified, N' does not exist');
        THROW 50001, @message, 1;
    END;

    -- The column, when missing (existing rows get the current time).
    IF COL_LENGTH(@qualified, N'updated_at') IS NULL
    BEGIN
        SET @sql = N'ALTER TABLE ' + @qualified
            + N' ADD updated_at DATETIME2(7) NOT NULL CONSTRAINT '
            + QUOTENAME(N'DF_' + @table + N'_updated_at')
            + N' DEFAULT SYSUTCDATETIME() WITH VALUES;';
        EXEC sys.sp_executesql @sql;
    END;

    -- Widen DATETIME, SMALLDATETIME or a coarser DATETIME2 to DATETIME2(7) NOT NULL
    -- (DATETIME rounds to 1/300 s; the ETL keeps the source's precision).
    IF EXISTS (
        SELECT 1
        FROM sys.columns AS c
        JOIN sys.types AS t ON t.user_type_id = c.user_type_id
        WHERE c.object_id = @object_id
          AND c.name = N'updated_at'
          AND (t.name <> N'datetime2' OR c.scale <> 7 OR c.is_nullable = 1)
    )
    BEGIN
        -- ALTER COLUMN is refused while an index or a default uses the column.
        -- Single-column indexes are rebuilt below; any other is the DBA's call.
        SET @list = NULL;
        SELECT @list = STRING_AGG(CONVERT(NVARCHAR(MAX), i.name), N', ')
        FROM sys.indexes AS i
        WHERE i.object_id = @object_id
          AND EXISTS (
              SELECT 1
              FROM sys.index_columns AS ic
              JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
              WHERE ic.object_id = i.object_id AND ic.index_id = i.index_id AND c.name = N'updated_at')
          AND (i.is_primary_key = 1 OR i.is_unique_constraint = 1
               OR (SELECT COUNT(*) FROM sys.index_columns AS ic
                   WHERE ic.object_id = i.object_id AND ic.index_id = i.index_id) > 1);
        IF @list IS NOT NULL
        BEGIN
            SET @message = CONCAT(@qualified, N': indexes ', @list,
                N' contain updated_at; drop them, run this script again, then recreate them');
            THROW 50002, @message, 1;
        END;

        SET @sql = NULL;
        SELECT @sql = STRING_AGG(
            CONVERT(NVARCHAR(MAX), N'DROP INDEX ' + QUOTENAME(i.name) + N' ON ' + @qualified + N';'), N' ')
        FROM sys.indexes AS i
        JOIN sys.index_columns AS ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id
        JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
        WHERE i.object_id = @object_id AND c.name = N'updated_at';
        IF @sql IS NOT NULL
            EXEC sys.sp_executesql @sql;

        SET @name = NULL;
        SELECT @name = dc.name
        FROM sys.default_constraints AS dc
        JOIN sys.columns AS c ON c.object_id = dc.parent_object_id AND c.column_id = dc.parent_column_id
        WHERE dc.parent_object_id = @object_id AND c.name = N'updated_at';
        IF @name IS NOT NULL
        BEGIN
            SET @sql = N'ALTER TABLE ' + @qualified + N' DROP CONSTRAINT ' + QUOTENAME(@name) + N';';
            EXEC sys.sp_executesql @sql;
        END;

        SET @sql = N'UPDATE ' + @qualified
            + N' SET updated_at = SYSUTCDATETIME() WHERE updated_at IS NULL;';
        EXEC sys.sp_executesql @sql;
        SET @sql = N'ALTER TABLE ' + @qualified + N' ALTER COLUMN updated_at DATETIME2(7) NOT NULL;';
        EXEC sys.sp_executesql @sql;
    END;

    -- The default: rows inserted without updated_at get the server's UTC time.
    IF NOT EXISTS (
        SELECT 1
        FROM sys.default_constraints AS dc
        JOIN sys.columns AS c ON c.object_id = dc.parent_object_id AND c.column_id = dc.parent_column_id
        WHERE dc.parent_object_id = @object_id AND c.name = N'updated_at'
    )
    BEGIN
        SET @sql = N'ALTER TABLE ' + @qualified + N' ADD CONSTRAINT '
            + QUOTENAME(N'DF_' + @table + N'_updated_at')
            + N' DEFAULT SYSUTCDATETIME() FOR updated_at;';
        EXEC sys.sp_executesql @sql;
    END;

    -- The index for `updated_at >= watermark` range reads (the clustered primary
    -- key rides along in every nonclustered index, so (updated_at, id) is covered).
    IF NOT EXISTS (
        SELECT 1
        FROM sys.index_columns AS ic
        JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
        WHERE ic.object_id = @object_id AND ic.key_ordinal = 1 AND c.name = N'updated_at'
    )
    BEGIN
        SET @sql = N'CREATE INDEX ' + QUOTENAME(N'IX_' + @table + N'_updated_at')
            + N' ON ' + @qualified + N' (updated_at);';
        EXEC sys.sp_executesql @sql;
    END;

    -- The trigger: every inserted or updated row gets the server's UTC time.
    SET @list = NULL;
    SELECT @list = STRING_AGG(
        CONVERT(NVARCHAR(MAX), N't.' + QUOTENAME(c.name) + N' = i.' + QUOTENAME(c.name)), N' AND ')
    FROM sys.indexes AS ix
    JOIN sys.index_columns AS ic ON ic.object_id = ix.object_id AND ic.index_id = ix.index_id
    JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
    WHERE ix.object_id = @object_id AND ix.is_primary_key = 1;
    IF @list IS NULL
    BEGIN
        SET @message = CONCAT(@qualified, N' has no primary key; the ETL merges on one, add it first');
        THROW 50003, @message, 1;
    END;

    SET @sql = N'CREATE OR ALTER TRIGGER dbo.' + QUOTENAME(N'TR_' + @table + N'_updated_at')
        + N' ON ' + @qualified + N' AFTER INSERT, UPDATE AS' + NCHAR(10)
        + N'BEGIN' + NCHAR(10)
        + N'    SET NOCOUNT ON;' + NCHAR(10)
        + N'    -- The UPDATE below fires this trigger again when RECURSIVE_TRIGGERS is on.' + NCHAR(10)
        + N'    IF TRIGGER_NESTLEVEL(@@PROCID) > 1 OR NOT EXISTS (SELECT 1 FROM inserted) RETURN;' + NCHAR(10)
        + N'    UPDATE t SET updated_at = SYSUTCDATETIME()' + NCHAR(10)
        + N'    FROM ' + @qualified + N' AS t' + NCHAR(10)
        + N'    INNER JOIN inserted AS i ON ' + @list + N';' + NCHAR(10)
        + N'END;';
    EXEC sys.sp_executesql @sql;
END;
GO

------------------------------------------------------------------------------
-- 3. Snapshot isolation: consistent reads that never block writers (row
--    versions live in tempdb while a reading transaction needs them).
------------------------------------------------------------------------------
IF NOT EXISTS (
    SELECT 1 FROM sys.databases WHERE database_id = DB_ID() AND snapshot_isolation_state = 1
)
    ALTER DATABASE CURRENT SET ALLOW_SNAPSHOT_ISOLATION ON;
GO

------------------------------------------------------------------------------
-- 4. The ETL's read-only login, user and role.
------------------------------------------------------------------------------
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = N'$(ETL_LOGIN)')
    CREATE LOGIN [$(ETL_LOGIN)]
        WITH PASSWORD = N'$(ETL_PASSWORD)',
             CHECK_POLICY = ON,
             CHECK_EXPIRATION = OFF,
             DEFAULT_DATABASE = [$(DATABASE_NAME)];
ELSE
    -- Re-running the script with a new ETL_PASSWORD rotates it.
    ALTER LOGIN [$(ETL_LOGIN)] WITH PASSWORD = N'$(ETL_PASSWORD)';
GO

IF DATABASE_PRINCIPAL_ID(N'analytics_etl_reader') IS NULL
    CREATE ROLE [analytics_etl_reader] AUTHORIZATION [dbo];
GO

IF DATABASE_PRINCIPAL_ID(N'$(ETL_LOGIN)') IS NULL
    CREATE USER [$(ETL_LOGIN)] FOR LOGIN [$(ETL_LOGIN)] WITH DEFAULT_SCHEMA = [dbo];
GO

IF IS_ROLEMEMBER(N'analytics_etl_reader', N'$(ETL_LOGIN)') = 0
    ALTER ROLE [analytics_etl_reader] ADD MEMBER [$(ETL_LOGIN)];
GO

-- Only the tables the ETL reads; grant SELECT on any other table named in TABLES_TO_SYNC.
GRANT SELECT ON OBJECT::dbo.products TO [analytics_etl_reader];
GRANT SELECT ON OBJECT::dbo.inventory TO [analytics_etl_reader];
GRANT SELECT ON OBJECT::dbo.customers TO [analytics_etl_reader];
GRANT SELECT ON OBJECT::dbo.orders TO [analytics_etl_reader];
GRANT SELECT ON OBJECT::dbo.transactions TO [analytics_etl_reader];
-- Even if someone later adds the user to a wider role, it cannot write.
DENY INSERT, UPDATE, DELETE, ALTER, EXECUTE ON SCHEMA::dbo TO [analytics_etl_reader];
GO

PRINT N'analytics-etl source ready in $(DATABASE_NAME); ETL login: $(ETL_LOGIN)';
GO
