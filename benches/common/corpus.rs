//! The benchmarks' mail corpus (issue 2's): a seeded generator of realistic support mail,
//! new requests from a few thousand customers, about a third replies, MTA redeliveries,
//! plain, HTML-only and alternative bodies, several charsets and transfer encodings, six
//! languages, 50-500 KB attachments; and the spool file the pipeline bench streams it
//! through. Shared by `pipeline` and `smtp_load` (`#[path]` module), so both measure the
//! same mail.

// Each bench uses part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore, SeedableRng};

pub const RECIPIENTS: [&str; 2] = ["support@acme.test", "sales@acme.test"];
pub const CUSTOMERS: usize = 3000;

// ---------------------------------------------------------------------------------------
// Spool: the generated corpus on disk, read back batch by batch
// ---------------------------------------------------------------------------------------

pub const FLAG_HTML_ONLY: u8 = 1;
pub const FLAG_ALTERNATIVE: u8 = 2;
pub const FLAG_ATTACHMENT: u8 = 4;

/// What the generator meant a message to become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    NewRequest,
    Reply,
    Redelivery,
}

impl Expect {
    pub fn outcome(self) -> &'static str {
        match self {
            Expect::NewRequest => "created",
            Expect::Reply => "appended",
            Expect::Redelivery => "duplicate",
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Expect::NewRequest => 0,
            Expect::Reply => 1,
            Expect::Redelivery => 2,
        }
    }

    pub fn from_byte(b: u8) -> io::Result<Self> {
        match b {
            0 => Ok(Expect::NewRequest),
            1 => Ok(Expect::Reply),
            2 => Ok(Expect::Redelivery),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad spool record",
            )),
        }
    }
}

pub struct SpoolRecord {
    pub expect: Expect,
    pub recipient: u8,
    pub flags: u8,
    pub raw: Vec<u8>,
}

pub struct SpoolWriter(pub BufWriter<File>);

impl SpoolWriter {
    pub fn write(
        &mut self,
        expect: Expect,
        recipient: u8,
        flags: u8,
        raw: &[u8],
    ) -> io::Result<()> {
        let len = u32::try_from(raw.len()).map_err(io::Error::other)?;
        self.0.write_all(&[expect.byte(), recipient, flags])?;
        self.0.write_all(&len.to_le_bytes())?;
        self.0.write_all(raw)
    }
}

pub struct SpoolReader(pub BufReader<File>);

impl SpoolReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self(BufReader::with_capacity(1 << 20, File::open(path)?)))
    }

    pub fn read_one(&mut self) -> io::Result<Option<SpoolRecord>> {
        let mut head = [0u8; 7];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut raw = vec![0u8; len];
        self.0.read_exact(&mut raw)?;
        Ok(Some(SpoolRecord {
            expect: Expect::from_byte(head[0])?,
            recipient: head[1],
            flags: head[2],
            raw,
        }))
    }

    pub fn next_batch(&mut self, n: usize) -> io::Result<Vec<SpoolRecord>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.read_one()? {
                Some(r) => out.push(r),
                None => break,
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Corpus generator
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Charset {
    Utf8,
    Ascii,
    Latin1,
    Win1252,
    Koi8r,
    Iso2022jp,
    ShiftJis,
}

impl Charset {
    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Ascii => "us-ascii",
            Charset::Latin1 => "ISO-8859-1",
            Charset::Win1252 => "windows-1252",
            Charset::Koi8r => "KOI8-R",
            Charset::Iso2022jp => "ISO-2022-JP",
            Charset::ShiftJis => "Shift_JIS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cte {
    SevenBit,
    EightBit,
    QuotedPrintable,
    Base64,
}

impl Cte {
    pub fn name(self) -> &'static str {
        match self {
            Cte::SevenBit => "7bit",
            Cte::EightBit => "8bit",
            Cte::QuotedPrintable => "quoted-printable",
            Cte::Base64 => "base64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Outlook,
    Gmail,
    AppleMail,
    Thunderbird,
    Mobile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lang {
    En,
    De,
    Fr,
    Es,
    Ru,
    Ja,
}

pub struct LangData {
    pub first: &'static [(&'static str, &'static str)],
    pub last: &'static [(&'static str, &'static str)],
    pub family_first: bool,
    pub greet: &'static [&'static str],
    pub body: &'static [&'static str],
    pub close: &'static [&'static str],
    pub reply: &'static [&'static str],
    pub subject: &'static [&'static str],
    pub re: &'static [&'static str],
    pub wrote: &'static str,
    pub tld: &'static str,
    pub freemail: &'static [&'static str],
    pub tz_hours: i32,
    pub disclaimer: &'static str,
}

pub const COMPANY_A: &[&str] = &[
    "north", "blue", "star", "green", "silver", "nova", "alpine", "harbor", "cedar", "summit",
    "iron", "bright", "delta", "polar", "urban", "maple", "swift", "coral", "atlas", "vertex",
];
pub const COMPANY_B: &[&str] = &[
    "tech",
    "works",
    "logistics",
    "labs",
    "systems",
    "media",
    "foods",
    "trading",
    "consulting",
    "dynamics",
    "retail",
    "energy",
];

pub fn lang_data(lang: Lang) -> &'static LangData {
    match lang {
        Lang::En => &EN,
        Lang::De => &DE,
        Lang::Fr => &FR,
        Lang::Es => &ES,
        Lang::Ru => &RU,
        Lang::Ja => &JA,
    }
}

pub static EN: LangData = LangData {
    first: &[
        ("James", "james"),
        ("Mary", "mary"),
        ("Robert", "robert"),
        ("Patricia", "patricia"),
        ("Michael", "michael"),
        ("Linda", "linda"),
        ("David", "david"),
        ("Susan", "susan"),
        ("Daniel", "daniel"),
        ("Karen", "karen"),
        ("Chloë", "chloe"),
        ("Zoë", "zoe"),
        ("Emily", "emily"),
        ("Oliver", "oliver"),
        ("Sophie", "sophie"),
        ("Liam", "liam"),
        ("Renée", "renee"),
        ("Aiden", "aiden"),
    ],
    last: &[
        ("Smith", "smith"),
        ("Johnson", "johnson"),
        ("Williams", "williams"),
        ("Brown", "brown"),
        ("Jones", "jones"),
        ("Miller", "miller"),
        ("Davis", "davis"),
        ("Wilson", "wilson"),
        ("Taylor", "taylor"),
        ("O'Connor", "oconnor"),
        ("Anderson", "anderson"),
        ("Clarke", "clarke"),
        ("Walker", "walker"),
        ("Wright", "wright"),
        ("Thompson", "thompson"),
        ("Evans", "evans"),
    ],
    family_first: false,
    greet: &[
        "Hi team,",
        "Hello,",
        "Hi Acme support,",
        "Dear support team,",
        "Good morning,",
    ],
    body: &[
        "I'm having trouble logging into my account since this morning.",
        "Our invoice {n} shows the wrong amount — we were charged €249 instead of €199.",
        "Could you please check the status of order #{n}?",
        "The export to CSV fails with “Unknown error” after a few seconds.",
        "We’d like to add two more seats to our subscription.",
        "The mobile app crashes when I open the reports tab.",
        "I already tried clearing the cache and reinstalling the app.",
        "This is blocking our month-end close, so a quick answer would be appreciated.",
        "The shipment arrived damaged; two of the five items are broken.",
        "Can you confirm whether the price includes VAT?",
        "After the latest update the dashboard loads very slowly.",
        "Our team lead cannot see the shared inbox anymore.",
        "The password reset e-mail never arrives, not even in the spam folder.",
        "We were billed twice for the same period, see reference {n}.",
        "Is there a way to export all tickets of last year in one go?",
        "Since Tuesday the synchronisation with our calendar stopped working.",
        "Please cancel order {n}, we placed it by mistake.",
        "I would like to change the billing address to our new office.",
    ],
    close: &[
        "Please let me know if you need any more details.\n\nBest regards,",
        "Thanks in advance!\n\nCheers,",
        "Thank you for your help.\n\nKind regards,",
        "Looking forward to your reply.\n\nRegards,",
    ],
    reply: &[
        "Any update on this?",
        "Just following up on my message below.",
        "Here is the additional information you asked for: the error happens on every login attempt.",
        "The problem is still there this morning.",
        "Thanks, but unfortunately that did not solve it.",
        "Could someone please get back to me today?",
    ],
    subject: &[
        "Login problem",
        "Wrong amount on invoice {n}",
        "Order #{n} status",
        "CSV export fails",
        "Add seats to our subscription",
        "App crashes on the reports tab",
        "Damaged shipment (order {n})",
        "Question about VAT",
        "Dashboard very slow after update",
        "Shared inbox not visible",
        "Password reset e-mail not arriving",
        "Charged twice — ref {n}",
        "Cancel order {n}",
        "Change of billing address",
    ],
    re: &["Re: ", "RE: "],
    wrote: "On {date}, {name} wrote:",
    tld: "example.com",
    freemail: &["gmail.example", "outlook.example", "yahoo.example"],
    tz_hours: -5,
    disclaimer: "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential and may be privileged. If you are not the intended recipient, please notify the sender immediately and delete this message. Any unauthorised use, disclosure or copying of this message is prohibited. E-mail is not a secure medium and we accept no liability for any damage caused by viruses transmitted with it.",
};

pub static DE: LangData = LangData {
    first: &[
        ("Jürgen", "juergen"),
        ("Anna", "anna"),
        ("Stefan", "stefan"),
        ("Katrin", "katrin"),
        ("Björn", "bjoern"),
        ("Sabine", "sabine"),
        ("Thomas", "thomas"),
        ("Ute", "ute"),
        ("Matthias", "matthias"),
        ("Jörg", "joerg"),
        ("Claudia", "claudia"),
        ("Lukas", "lukas"),
    ],
    last: &[
        ("Müller", "mueller"),
        ("Schmidt", "schmidt"),
        ("Schneider", "schneider"),
        ("Fischer", "fischer"),
        ("Weiß", "weiss"),
        ("Meyer", "meyer"),
        ("Wagner", "wagner"),
        ("Becker", "becker"),
        ("Schäfer", "schaefer"),
        ("Hoffmann", "hoffmann"),
        ("Köhler", "koehler"),
        ("Groß", "gross"),
    ],
    family_first: false,
    greet: &[
        "Guten Tag,",
        "Hallo zusammen,",
        "Sehr geehrte Damen und Herren,",
        "Hallo Support-Team,",
    ],
    body: &[
        "Seit gestern funktioniert der Export nicht mehr.",
        "Können Sie mir bitte die Rechnung {n} für März noch einmal schicken?",
        "Die Lieferung ist leider unvollständig angekommen.",
        "Ich habe das Passwort zurückgesetzt, aber die E-Mail kommt nicht an.",
        "Über eine kurze Rückmeldung würde ich mich freuen.",
        "Die Größe der Datei beträgt übrigens etwa 3 MB.",
        "Unser Zugang ist seit dem Update gesperrt.",
        "Bitte prüfen Sie, warum die Bestellung {n} storniert wurde.",
        "Wir möchten unser Abonnement um zwei Plätze erweitern.",
        "Die App stürzt beim Öffnen der Berichte ab.",
        "Auf der Rechnung fehlt unsere Umsatzsteuer-ID.",
        "Die Synchronisation mit dem Kalender schlägt regelmäßig fehl.",
        "Der Betrag von 1.250 € wurde zweimal abgebucht – bitte „dringend“ prüfen.",
    ],
    close: &[
        "Vielen Dank für Ihre schnelle Hilfe.\n\nMit freundlichen Grüßen",
        "Danke im Voraus!\n\nViele Grüße",
        "Besten Dank und freundliche Grüße",
    ],
    reply: &[
        "Gibt es schon Neuigkeiten?",
        "Ich wollte mich noch einmal wegen meiner Anfrage melden.",
        "Das Problem besteht leider weiterhin.",
        "Anbei noch die gewünschten Informationen: der Fehler tritt bei jedem Login auf.",
    ],
    subject: &[
        "Problem mit der Rechnung {n}",
        "Lieferung unvollständig",
        "Passwort zurücksetzen – keine E-Mail",
        "Frage zur Verlängerung",
        "Export funktioniert nicht",
        "Zugang gesperrt",
        "Bestellung {n} storniert?",
        "App stürzt ab",
        "Umsatzsteuer-ID fehlt",
    ],
    re: &["AW: ", "Re: "],
    wrote: "Am {date} schrieb {name}:",
    tld: "example.de",
    freemail: &["web.example.de", "gmx.example.de", "t-online.example.de"],
    tz_hours: 1,
    disclaimer: "Diese E-Mail enthält vertrauliche und/oder rechtlich geschützte Informationen. Wenn Sie nicht der richtige Adressat sind oder diese E-Mail irrtümlich erhalten haben, informieren Sie bitte sofort den Absender und vernichten Sie diese Mail. Das unerlaubte Kopieren sowie die unbefugte Weitergabe dieser Mail sind nicht gestattet. Geschäftsführer: Dr. Hans Meier, Amtsgericht München HRB 123456.",
};

pub static FR: LangData = LangData {
    first: &[
        ("François", "francois"),
        ("Élodie", "elodie"),
        ("Jérôme", "jerome"),
        ("Hélène", "helene"),
        ("Nicolas", "nicolas"),
        ("Céline", "celine"),
        ("Benoît", "benoit"),
        ("Amélie", "amelie"),
        ("Julien", "julien"),
        ("Manon", "manon"),
    ],
    last: &[
        ("Lefèvre", "lefevre"),
        ("Martin", "martin"),
        ("Bernard", "bernard"),
        ("Dubois", "dubois"),
        ("Moreau", "moreau"),
        ("Laurent", "laurent"),
        ("Girard", "girard"),
        ("Bonnet", "bonnet"),
        ("Lemaître", "lemaitre"),
        ("Fontaine", "fontaine"),
    ],
    family_first: false,
    greet: &["Bonjour,", "Bonjour à toute l'équipe,", "Madame, Monsieur,"],
    body: &[
        "Je n'arrive plus à me connecter depuis la mise à jour.",
        "Pourriez-vous vérifier ma dernière facture ?",
        "La commande n° {n} n'a toujours pas été livrée.",
        "Le problème est réapparu ce matin à 9 h.",
        "Nous souhaitons ajouter trois utilisateurs à notre équipe.",
        "L'export en CSV échoue avec le message « erreur inconnue ».",
        "Le montant facturé ne correspond pas au devis {n}.",
        "L'application se ferme dès que j'ouvre les rapports.",
        "Est-il possible de changer l'adresse de facturation ?",
        "Je n'ai pas reçu l'e-mail de réinitialisation du mot de passe.",
    ],
    close: &[
        "Merci d'avance pour votre réponse rapide.\n\nCordialement,",
        "Bien à vous,",
        "Merci beaucoup.\n\nBonne journée,",
    ],
    reply: &[
        "Avez-vous du nouveau ?",
        "Je me permets de relancer ma demande ci-dessous.",
        "Le problème persiste malheureusement.",
        "Voici les informations demandées : l'erreur apparaît à chaque connexion.",
    ],
    subject: &[
        "Problème de connexion",
        "Facture erronée",
        "Commande n° {n} non livrée",
        "Ajout d'utilisateurs",
        "Échec de l'export CSV",
        "Changement d'adresse de facturation",
        "Réinitialisation du mot de passe",
    ],
    re: &["RE: ", "Re: "],
    wrote: "Le {date}, {name} a écrit :",
    tld: "example.fr",
    freemail: &["orange.example.fr", "free.example.fr", "laposte.example.fr"],
    tz_hours: 1,
    disclaimer: "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention exclusive de ses destinataires. Toute utilisation ou diffusion non autorisée est interdite. Si vous avez reçu ce message par erreur, merci de le détruire et d'en avertir immédiatement l'expéditeur.",
};

pub static ES: LangData = LangData {
    first: &[
        ("José", "jose"),
        ("María", "maria"),
        ("Andrés", "andres"),
        ("Lucía", "lucia"),
        ("Sergio", "sergio"),
        ("Begoña", "begona"),
        ("Javier", "javier"),
        ("Inés", "ines"),
        ("Raúl", "raul"),
        ("Carmen", "carmen"),
    ],
    last: &[
        ("Núñez", "nunez"),
        ("García", "garcia"),
        ("Fernández", "fernandez"),
        ("López", "lopez"),
        ("Martínez", "martinez"),
        ("Sánchez", "sanchez"),
        ("Pérez", "perez"),
        ("Gómez", "gomez"),
        ("Ruiz", "ruiz"),
        ("Ibáñez", "ibanez"),
    ],
    family_first: false,
    greet: &["Hola,", "Buenos días,", "Estimado equipo de soporte:"],
    body: &[
        "El pedido {n} que hice la semana pasada todavía no ha llegado.",
        "¿Podrían enviarme una copia de la factura?",
        "No puedo iniciar sesión desde el móvil.",
        "La aplicación se cierra al abrir el informe.",
        "¿Es posible cambiar la dirección de envío?",
        "Nos han cobrado dos veces el mismo mes.",
        "La exportación a Excel falla con un error desconocido.",
        "Necesitamos añadir dos usuarios más a la cuenta.",
    ],
    close: &[
        "Muchas gracias por su atención.\n\nUn saludo,",
        "Quedo a la espera de su respuesta.\n\nSaludos cordiales,",
        "Gracias de antemano.",
    ],
    reply: &[
        "¿Hay alguna novedad?",
        "Les escribo de nuevo por mi consulta.",
        "El problema sigue sin resolverse.",
        "Aquí tienen la información que pidieron: el error ocurre siempre al entrar.",
    ],
    subject: &[
        "Pedido {n} no recibido",
        "Copia de la factura",
        "Error al iniciar sesión",
        "Cambio de dirección de envío",
        "Cobro duplicado",
        "Fallo en la exportación",
    ],
    re: &["RE: ", "Re: "],
    wrote: "El {date}, {name} escribió:",
    tld: "example.es",
    freemail: &["telefonica.example.es", "gmail.example"],
    tz_hours: 1,
    disclaimer: "",
};

pub static RU: LangData = LangData {
    first: &[
        ("Иван", "ivan"),
        ("Ольга", "olga"),
        ("Дмитрий", "dmitry"),
        ("Анна", "anna"),
        ("Сергей", "sergey"),
        ("Елена", "elena"),
        ("Алексей", "alexey"),
        ("Мария", "maria"),
        ("Пётр", "petr"),
    ],
    last: &[
        ("Петров", "petrov"),
        ("Смирнов", "smirnov"),
        ("Кузнецов", "kuznetsov"),
        ("Попов", "popov"),
        ("Соколов", "sokolov"),
        ("Лебедев", "lebedev"),
        ("Козлов", "kozlov"),
        ("Новиков", "novikov"),
        ("Фёдоров", "fedorov"),
    ],
    family_first: false,
    greet: &["Здравствуйте!", "Добрый день!", "Добрый день, коллеги!"],
    body: &[
        "Мой заказ {n} до сих пор не доставлен.",
        "Не могу войти в личный кабинет, пароль не подходит.",
        "В счёте указана неверная сумма, прошу проверить.",
        "Пожалуйста, ответьте как можно скорее.",
        "Прикладываю описание ошибки ниже.",
        "Хотим продлить подписку ещё на год.",
        "Приложение закрывается при открытии отчётов.",
        "Письмо для сброса пароля так и не пришло.",
        "Нам дважды выставили счёт за один и тот же месяц.",
    ],
    close: &[
        "Заранее спасибо.\n\nС уважением,",
        "Спасибо!\n\nС уважением,",
        "Жду ответа.\n\nВсего доброго,",
    ],
    reply: &[
        "Есть ли новости по моему вопросу?",
        "Напоминаю о своём обращении.",
        "Проблема по-прежнему не решена.",
        "Вот дополнительная информация: ошибка возникает при каждом входе.",
    ],
    subject: &[
        "Проблема с заказом {n}",
        "Ошибка при входе",
        "Вопрос по счёту",
        "Продление подписки",
        "Приложение закрывается",
        "Двойное списание",
    ],
    re: &["Re: ", "RE: "],
    wrote: "{date}, {name} пишет:",
    tld: "example.ru",
    freemail: &["yandex.example.ru", "mail.example.ru"],
    tz_hours: 3,
    disclaimer: "",
};

pub static JA: LangData = LangData {
    first: &[
        ("太郎", "taro"),
        ("花子", "hanako"),
        ("一郎", "ichiro"),
        ("美咲", "misaki"),
        ("健太", "kenta"),
        ("直子", "naoko"),
    ],
    last: &[
        ("山田", "yamada"),
        ("佐藤", "sato"),
        ("鈴木", "suzuki"),
        ("高橋", "takahashi"),
        ("田中", "tanaka"),
        ("伊藤", "ito"),
        ("渡辺", "watanabe"),
        ("中村", "nakamura"),
        ("小林", "kobayashi"),
        ("加藤", "kato"),
    ],
    family_first: true,
    greet: &["お世話になっております。"],
    body: &[
        "注文した商品がまだ届いていません。",
        "請求書の金額が間違っているようです。",
        "ログインできなくなりました。パスワードを再設定してください。",
        "添付のスクリーンショットをご覧ください。",
        "返品の手続きについて教えてください。",
        "アカウントの設定を変更したいです。",
        "至急ご確認をお願いいたします。",
    ],
    close: &["よろしくお願いいたします。"],
    reply: &[
        "その後いかがでしょうか。",
        "先日の問い合わせの件ですが、まだ回答をいただいておりません。",
    ],
    subject: &[
        "注文について ({n})",
        "請求書の件",
        "ログインできません",
        "返品のお願い",
        "アカウント設定の変更",
    ],
    re: &["Re: "],
    wrote: "{date}, {name} wrote:",
    tld: "example.jp",
    freemail: &["docomo.example.ne.jp", "yahoo.example.co.jp"],
    tz_hours: 9,
    disclaimer: "",
};

pub struct Customer {
    pub name: String,
    pub email: String,
    pub domain: String,
    pub lang: Lang,
    pub client: Client,
    pub phone: String,
}

/// An open conversation of one customer: what a follow-up quotes and refers to.
pub struct ThreadState {
    pub subject: String,
    pub quote: String,
    /// (message number, Message-ID) of the thread's latest messages, oldest first.
    pub messages: Vec<(usize, String)>,
}

#[derive(Default)]
pub struct CorpusStats {
    pub messages: u64,
    pub new_requests: u64,
    pub replies: u64,
    pub replies_references_only: u64,
    pub duplicates: u64,
    pub html_only: u64,
    pub alternative: u64,
    pub plain: u64,
    pub attachments: u64,
    pub attachment_bytes: u64,
    pub with_cc: u64,
    pub to_sales: u64,
    pub bytes: u64,
    pub largest: u64,
    pub charsets: BTreeMap<Charset, u64>,
    pub langs: BTreeMap<Lang, u64>,
    pub customers_used: u64,
    pub lag: usize,
    pub secs: f64,
}

impl CorpusStats {
    pub fn print(&self) {
        let pct = |n: u64| 100.0 * n as f64 / self.messages.max(1) as f64;
        println!();
        println!(
            "== Corpus (generated in {:.2} s, spooled to a temporary file; not part of the timings) ==",
            self.secs
        );
        println!(
            "{} messages, {:.1} MB: {} new requests ({:.0} %), {} replies ({:.0} %; {} with References only), {} redeliveries ({:.1} %)",
            self.messages,
            self.bytes as f64 / 1e6,
            self.new_requests,
            pct(self.new_requests),
            self.replies,
            pct(self.replies),
            self.replies_references_only,
            self.duplicates,
            pct(self.duplicates)
        );
        println!(
            "from {} distinct customers (pool of {CUSTOMERS}); {} to sales@, the rest to support@; {} with Cc",
            self.customers_used, self.to_sales, self.with_cc
        );
        println!(
            "formats: text/plain {} ({:.0} %), html-only {} ({:.0} %), multipart/alternative {} ({:.0} %); with a 50-500 KB attachment {} ({:.1} %, {:.0} MB, largest message {:.0} KB)",
            self.plain,
            pct(self.plain),
            self.html_only,
            pct(self.html_only),
            self.alternative,
            pct(self.alternative),
            self.attachments,
            pct(self.attachments),
            self.attachment_bytes as f64 / 1e6,
            self.largest as f64 / 1e3
        );
        println!(
            "charsets: {}",
            self.charsets
                .iter()
                .map(|(c, n)| format!("{} {n} ({:.0} %)", c.name(), pct(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "languages: {}",
            self.langs
                .iter()
                .map(|(l, n)| format!("{l:?} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

pub struct Generator {
    pub rng: StdRng,
    pub customers: Vec<Customer>,
    pub threads: Vec<Vec<ThreadState>>,
    pub with_threads: Vec<u32>,
    /// Earlier small messages that an MTA may deliver again: (message number, raw).
    pub redeliverable: VecDeque<(usize, u8, u8, Vec<u8>)>,
    pub used: Vec<bool>,
    pub clock: DateTime<Utc>,
    pub lag: usize,
    pub p_reply: f64,
    pub p_attachment: f64,
    pub stats: CorpusStats,
}

impl Generator {
    pub fn new(seed: u64, messages: usize, lag: usize, p_attachment: f64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let customers = make_customers(&mut rng);
        // About a third of all messages are replies; none can be before `lag`.
        let p_reply = if messages > lag {
            ((messages as f64 / 3.0) / (messages - lag) as f64).min(0.6)
        } else {
            0.0
        };
        Self {
            rng,
            threads: (0..customers.len()).map(|_| Vec::new()).collect(),
            used: vec![false; customers.len()],
            customers,
            with_threads: Vec::new(),
            redeliverable: VecDeque::new(),
            clock: Utc
                .with_ymd_and_hms(2025, 3, 3, 7, 0, 0)
                .single()
                .unwrap_or_default(),
            lag,
            p_reply,
            p_attachment,
            stats: CorpusStats::default(),
        }
    }

    /// Message number `i`: what it should become, its recipient index, format flags and bytes.
    pub fn next_message(&mut self, i: usize) -> (Expect, u8, u8, Vec<u8>) {
        self.clock += chrono::Duration::seconds(self.rng.random_range(1..=30));
        self.stats.messages += 1;
        // An MTA retry or a second path: the same message again, with one more Received line.
        if self.rng.random_bool(0.01)
            && let Some(pos) = self
                .redeliverable
                .iter()
                .position(|(n, ..)| n + self.lag <= i)
        {
            let (_, recipient, flags, raw) = self.redeliverable.remove(pos).unwrap_or_default();
            let mut again = format!(
                "Received: from relay2.acme.test (relay2.acme.test [10.0.0.12])\r\n\tby mx.acme.test (Postfix) with ESMTPS id {:X}; {}\r\n",
                self.rng.random::<u64>(),
                self.clock.to_rfc2822()
            )
            .into_bytes();
            again.extend_from_slice(&raw);
            self.stats.duplicates += 1;
            self.stats.bytes += again.len() as u64;
            return (Expect::Redelivery, recipient, flags, again);
        }
        let reply_to = if self.rng.random_bool(self.p_reply) {
            self.pick_thread(i)
        } else {
            None
        };
        let customer = match reply_to {
            Some((c, _, _)) => c,
            None => self.pick_customer(),
        };
        self.used[customer] = true;
        let (lang, name, domain, phone) = {
            let c = &self.customers[customer];
            (c.lang, c.name.clone(), c.domain.clone(), c.phone.clone())
        };
        let d = lang_data(lang);
        let charset = self.pick_charset(lang);
        *self.stats.charsets.entry(charset).or_default() += 1;
        *self.stats.langs.entry(lang).or_default() += 1;

        // Subject, body paragraphs and threading headers.
        let mut paras: Vec<Para> = Vec::new();
        let subject;
        let mut in_reply_to = None;
        let mut references = Vec::new();
        let quote_first;
        match reply_to {
            Some((_, t, m)) => {
                let (thread_subject, quote) = {
                    let thread = &self.threads[customer][t];
                    let upto = thread
                        .messages
                        .iter()
                        .position(|(n, _)| *n == m)
                        .unwrap_or(0);
                    references = thread.messages[..=upto]
                        .iter()
                        .map(|(_, id)| id.clone())
                        .collect();
                    (thread.subject.clone(), thread.quote.clone())
                };
                let re = *d.re.choose(&mut self.rng).unwrap_or(&"Re: ");
                subject = format!("{re}{thread_subject}");
                if self.rng.random_bool(0.9) {
                    in_reply_to = references.last().cloned();
                } else {
                    self.stats.replies_references_only += 1;
                }
                paras.push(Para::text(self.pick_fill(d.reply)));
                if self.rng.random_bool(0.4) {
                    paras.push(Para::text(self.pick_fill(d.body)));
                }
                quote_first = quote;
                self.stats.replies += 1;
            }
            None => {
                subject = self.pick_fill(d.subject);
                paras.push(Para::text(
                    d.greet.choose(&mut self.rng).unwrap_or(&"").to_string(),
                ));
                let sentences = self.rng.random_range(2..=7);
                let mut para = String::new();
                let mut first = String::new();
                for k in 0..sentences {
                    let s = self.pick_fill(d.body);
                    if k == 0 {
                        first = s.clone();
                    }
                    if !para.is_empty() {
                        para.push(if lang == Lang::Ja { '\n' } else { ' ' });
                    }
                    para.push_str(&s);
                    if self.rng.random_bool(0.35) {
                        paras.push(Para::text(std::mem::take(&mut para)));
                    }
                }
                if !para.is_empty() {
                    paras.push(Para::text(para));
                }
                quote_first = first;
                self.stats.new_requests += 1;
            }
        }
        for part in d.close.choose(&mut self.rng).unwrap_or(&"").split("\n\n") {
            paras.push(Para::text(part.to_string()));
        }
        paras.push(Para::signature(format!(
            "{name}\n{}\n{phone}",
            company_name(&domain)
        )));
        if !d.disclaimer.is_empty() && self.rng.random_bool(0.25) {
            paras.push(Para::signature(d.disclaimer.to_string()));
        }
        if reply_to.is_some() {
            let when = self.clock - chrono::Duration::hours(self.rng.random_range(2..72));
            let header = d
                .wrote
                .replace("{date}", &when.format("%a, %-d %b %Y at %H:%M").to_string())
                .replace("{name}", &name);
            paras.push(Para::text(header));
            paras.push(Para::quote(format!(
                "{}\n\n{quote_first}",
                d.greet.first().unwrap_or(&"")
            )));
        }

        // Format: ~15 % HTML only, ~20 % multipart/alternative, the rest text/plain; ~5 % attachment.
        let roll = self.rng.random::<f64>();
        let (html_only, alternative) = (roll < 0.15, (0.15..0.35).contains(&roll));
        let attachment = self.rng.random_bool(self.p_attachment);
        let mut flags = 0;
        if html_only {
            flags |= FLAG_HTML_ONLY;
            self.stats.html_only += 1;
        } else if alternative {
            flags |= FLAG_ALTERNATIVE;
            self.stats.alternative += 1;
        } else {
            self.stats.plain += 1;
        }

        let message_id = self.message_id(customer, i);
        let recipient = u8::from(self.rng.random_bool(0.1));
        self.stats.to_sales += u64::from(recipient);
        let raw = self.assemble(
            customer,
            charset,
            &subject,
            &message_id,
            in_reply_to.as_deref(),
            &references,
            &paras,
            html_only,
            alternative,
            attachment,
            recipient,
        );
        if attachment {
            flags |= FLAG_ATTACHMENT;
        }
        self.stats.bytes += raw.len() as u64;
        self.stats.largest = self.stats.largest.max(raw.len() as u64);

        // Remember the conversation for later follow-ups.
        match reply_to {
            Some((_, t, _)) => {
                let msgs = &mut self.threads[customer][t].messages;
                msgs.push((i, message_id));
                if msgs.len() > 8 {
                    msgs.remove(0);
                }
            }
            None => {
                let threads = &mut self.threads[customer];
                if threads.is_empty() {
                    self.with_threads.push(customer as u32);
                }
                if threads.len() >= 3 {
                    threads.remove(0);
                }
                threads.push(ThreadState {
                    subject: subject.clone(),
                    quote: quote_first,
                    messages: vec![(i, message_id)],
                });
            }
        }
        if !attachment && self.rng.random_bool(0.03) {
            self.redeliverable
                .push_back((i, recipient, flags, raw.clone()));
            if self.redeliverable.len() > 64 {
                self.redeliverable.pop_front();
            }
        }
        let expect = if reply_to.is_some() {
            Expect::Reply
        } else {
            Expect::NewRequest
        };
        (expect, recipient, flags, raw)
    }

    /// A customer with a conversation whose latest usable message is at least `lag` back:
    /// (customer, thread, message number replied to).
    pub fn pick_thread(&mut self, i: usize) -> Option<(usize, usize, usize)> {
        for _ in 0..6 {
            let c = *self.with_threads.choose(&mut self.rng)? as usize;
            let t = self.rng.random_range(0..self.threads[c].len());
            if let Some((n, _)) = self.threads[c][t]
                .messages
                .iter()
                .rev()
                .find(|(n, _)| n + self.lag <= i)
            {
                return Some((c, t, *n));
            }
        }
        None
    }

    /// Mildly skewed: some customers write far more often than others.
    pub fn pick_customer(&mut self) -> usize {
        let u: f64 = self.rng.random();
        ((u.powf(1.3) * self.customers.len() as f64) as usize).min(self.customers.len() - 1)
    }

    pub fn pick_fill(&mut self, templates: &[&str]) -> String {
        let t = *templates.choose(&mut self.rng).unwrap_or(&"");
        fill(&mut self.rng, t)
    }

    pub fn pick_charset(&mut self, lang: Lang) -> Charset {
        let options: &[(Charset, u32)] = match lang {
            Lang::En => &[
                (Charset::Utf8, 70),
                (Charset::Win1252, 15),
                (Charset::Ascii, 10),
                (Charset::Latin1, 5),
            ],
            Lang::De | Lang::Fr | Lang::Es => &[
                (Charset::Utf8, 55),
                (Charset::Latin1, 25),
                (Charset::Win1252, 20),
            ],
            Lang::Ru => &[(Charset::Koi8r, 50), (Charset::Utf8, 50)],
            Lang::Ja => &[
                (Charset::Iso2022jp, 55),
                (Charset::ShiftJis, 30),
                (Charset::Utf8, 15),
            ],
        };
        weighted(&mut self.rng, options)
    }

    pub fn message_id(&mut self, customer: usize, i: usize) -> String {
        let c = &self.customers[customer];
        let a = self.rng.random::<u64>();
        let b = self.rng.random::<u64>();
        match c.client {
            Client::Outlook => format!(
                "AM0PR04MB{:04}{:016X}@AM0PR04MB{:04}.eurprd04.prod.outlook.com",
                a % 10_000,
                b,
                (a >> 20) % 10_000
            ),
            Client::Gmail => format!("CA+{:016x}{:016x}{i:x}@mail.gmail.com", a, b),
            Client::AppleMail => format!(
                "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}@{}",
                a >> 32,
                a & 0xffff,
                b >> 48,
                (b >> 32) & 0xffff,
                b & 0xffff_ffff_ffff,
                c.domain
            ),
            Client::Thunderbird | Client::Mobile => {
                format!("{:016x}.{i}.{:08x}@{}", a, b as u32, c.domain)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn assemble(
        &mut self,
        customer: usize,
        cs: Charset,
        subject: &str,
        message_id: &str,
        in_reply_to: Option<&str>,
        references: &[String],
        paras: &[Para],
        html_only: bool,
        alternative: bool,
        attachment: bool,
        recipient: u8,
    ) -> Vec<u8> {
        let c = &self.customers[customer];
        let d = lang_data(c.lang);
        let rng = &mut self.rng;
        let tz = FixedOffset::east_opt(d.tz_hours * 3600)
            .unwrap_or(FixedOffset::east_opt(0).expect("utc"));
        let date = self.clock.with_timezone(&tz).to_rfc2822();
        let ip = rng.random_range(1..255);
        let mut h = String::with_capacity(2048);
        let _ = write!(h, "Return-Path: <{}>\r\n", c.email);
        let _ = write!(
            h,
            "Received: from mail.{dom} (mail.{dom} [198.51.100.{ip}])\r\n\tby mx.acme.test (Postfix) with ESMTPS id 4Z{:010X}\r\n\tfor <{}>; {}\r\n",
            rng.random::<u64>() & 0xff_ffff_ffff,
            RECIPIENTS[usize::from(recipient)],
            self.clock.to_rfc2822(),
            dom = c.domain
        );
        if rng.random_bool(0.6) {
            let _ = write!(
                h,
                "Authentication-Results: mx.acme.test;\r\n\tdkim=pass header.d={dom} header.s=s1;\r\n\tspf=pass smtp.mailfrom={dom};\r\n\tdmarc=pass header.from={dom}\r\n",
                dom = c.domain
            );
        }
        let _ = write!(
            h,
            "From: {}\r\n",
            mailbox_header(&c.name, &c.email, cs, rng)
        );
        let _ = write!(
            h,
            "To: {}\r\n",
            if recipient == 0 {
                "Acme Support <support@acme.test>"
            } else {
                "Acme Sales <sales@acme.test>"
            }
        );
        if rng.random_bool(0.1) {
            let colleague = format!(
                "{}.{}@{}",
                d.first.choose(rng).map_or("team", |f| f.1),
                d.last.choose(rng).map_or("x", |l| l.1),
                c.domain
            );
            let _ = write!(h, "Cc: {colleague}\r\n");
            self.stats.with_cc += 1;
        }
        let _ = write!(h, "Subject: {}\r\n", encode_header_text(subject, cs, rng));
        let _ = write!(h, "Date: {date}\r\n");
        let _ = write!(h, "Message-ID: <{message_id}>\r\n");
        if let Some(id) = in_reply_to {
            let _ = write!(h, "In-Reply-To: <{id}>\r\n");
        }
        if !references.is_empty() {
            let refs: Vec<String> = references.iter().map(|r| format!("<{r}>")).collect();
            let _ = write!(h, "References: {}\r\n", refs.join("\r\n "));
        }
        match c.client {
            Client::Outlook => {
                h.push_str("X-Mailer: Microsoft Outlook 16.0\r\nThread-Index: AdqMz");
                let _ = write!(
                    h,
                    "{:012X}==\r\nContent-Language: {}\r\n",
                    rng.random::<u64>() & 0xffff_ffff_ffff,
                    lang_tag(c.lang)
                );
            }
            Client::Gmail => {}
            Client::AppleMail => h.push_str("X-Mailer: Apple Mail (2.3774.500.171.1.1)\r\n"),
            Client::Thunderbird => {
                h.push_str("User-Agent: Mozilla Thunderbird\r\nContent-Language: en-US\r\n")
            }
            Client::Mobile => h.push_str("X-Mailer: iPhone Mail (21E236)\r\n"),
        }
        h.push_str("MIME-Version: 1.0\r\n");

        let text_cte = text_cte(cs, rng);
        let html_cte = html_cte(cs, rng);
        let body_part = if html_only {
            leaf("text/html", cs, html_cte, &render_html(paras, c, cs, rng))
        } else if alternative {
            let boundary = boundary(rng);
            let text = leaf("text/plain", cs, text_cte, &render_text(paras));
            let html = leaf("text/html", cs, html_cte, &render_html(paras, c, cs, rng));
            multipart("alternative", &boundary, &[text, html])
        } else {
            leaf("text/plain", cs, text_cte, &render_text(paras))
        };
        let mut raw = h.into_bytes();
        if attachment {
            let boundary = boundary(rng);
            let att = attachment_part(rng, c.lang, &mut self.stats);
            raw.extend_from_slice(&multipart("mixed", &boundary, &[body_part, att]));
        } else {
            raw.extend_from_slice(&body_part);
        }
        raw
    }
}

pub fn make_customers(rng: &mut StdRng) -> Vec<Customer> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(CUSTOMERS);
    // Companies per language: several customers share a domain, as colleagues do.
    let mut companies: HashMap<Lang, Vec<String>> = HashMap::new();
    for i in 0..CUSTOMERS {
        let lang = weighted(
            rng,
            &[
                (Lang::En, 45),
                (Lang::De, 18),
                (Lang::Fr, 10),
                (Lang::Es, 9),
                (Lang::Ru, 9),
                (Lang::Ja, 9),
            ],
        );
        let d = lang_data(lang);
        let list = companies.entry(lang).or_insert_with(|| {
            let mut v = Vec::new();
            for a in COMPANY_A {
                for b in COMPANY_B {
                    v.push(format!("{a}{b}.{}", d.tld));
                }
            }
            v
        });
        let domain = if rng.random_bool(0.2) {
            d.freemail
                .choose(rng)
                .unwrap_or(&"mail.example")
                .to_string()
        } else {
            list[rng.random_range(0..list.len().min(120))].clone()
        };
        let (first, first_ascii) = *d.first.choose(rng).unwrap_or(&("Alex", "alex"));
        let (last, last_ascii) = *d.last.choose(rng).unwrap_or(&("Doe", "doe"));
        let name = if d.family_first {
            format!("{last} {first}")
        } else {
            format!("{first} {last}")
        };
        let mut email = format!("{first_ascii}.{last_ascii}@{domain}");
        if !seen.insert(email.clone()) {
            email = format!("{first_ascii}.{last_ascii}{i}@{domain}");
            seen.insert(email.clone());
        }
        let client = weighted(
            rng,
            &[
                (Client::Outlook, 35),
                (Client::Gmail, 30),
                (Client::AppleMail, 15),
                (Client::Thunderbird, 15),
                (Client::Mobile, 5),
            ],
        );
        let phone = format!(
            "Tel. +{} {} {}",
            [1, 49, 33, 34, 7, 81][lang as usize],
            rng.random_range(20..990),
            rng.random_range(100_000..9_999_999)
        );
        out.push(Customer {
            name,
            email,
            domain,
            lang,
            client,
            phone,
        });
    }
    out
}

pub fn weighted<T: Copy>(rng: &mut StdRng, options: &[(T, u32)]) -> T {
    let total: u32 = options.iter().map(|o| o.1).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for (item, w) in options {
        if roll < *w {
            return *item;
        }
        roll -= w;
    }
    options[0].0
}

pub fn fill(rng: &mut StdRng, template: &str) -> String {
    if template.contains("{n}") {
        template.replace("{n}", &rng.random_range(10_000..99_999).to_string())
    } else {
        template.to_string()
    }
}

pub fn company_name(domain: &str) -> String {
    let stem = domain.split('.').next().unwrap_or(domain);
    let mut c = stem.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub fn lang_tag(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "en-US",
        Lang::De => "de-DE",
        Lang::Fr => "fr-FR",
        Lang::Es => "es-ES",
        Lang::Ru => "ru-RU",
        Lang::Ja => "ja-JP",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ParaKind {
    Text,
    Signature,
    Quote,
}

pub struct Para {
    pub kind: ParaKind,
    pub text: String,
}

impl Para {
    pub fn text(text: String) -> Self {
        Self {
            kind: ParaKind::Text,
            text,
        }
    }
    pub fn signature(text: String) -> Self {
        Self {
            kind: ParaKind::Signature,
            text,
        }
    }
    pub fn quote(text: String) -> Self {
        Self {
            kind: ParaKind::Quote,
            text,
        }
    }
}

pub fn render_text(paras: &[Para]) -> String {
    let mut out = String::new();
    for p in paras {
        if p.kind == ParaKind::Signature && !out.contains("\n-- \n") && p.text.contains('\n') {
            out.push_str("-- \n");
        }
        match p.kind {
            ParaKind::Quote => {
                for line in p.text.lines() {
                    out.push('>');
                    if !line.is_empty() {
                        out.push(' ');
                        out.push_str(line);
                    }
                    out.push('\n');
                }
            }
            _ => {
                out.push_str(&p.text);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>\n")
}

/// HTML as the customer's mail client writes it (Outlook's Word HTML is the bulky one).
pub fn render_html(paras: &[Para], c: &Customer, cs: Charset, rng: &mut StdRng) -> String {
    let mut s = String::with_capacity(4096);
    match c.client {
        Client::Outlook => {
            let _ = writeln!(
                s,
                "<html xmlns:v=\"urn:schemas-microsoft-com:vml\" xmlns:o=\"urn:schemas-microsoft-com:office:office\" \
                 xmlns:w=\"urn:schemas-microsoft-com:office:word\" xmlns:m=\"http://schemas.microsoft.com/office/2004/12/omml\" \
                 xmlns=\"http://www.w3.org/TR/REC-html40\">\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset={}\">\n\
                 <meta name=\"Generator\" content=\"Microsoft Word 15 (filtered medium)\">\n<style><!--\n\
                 /* Font Definitions */\n@font-face\n\t{{font-family:\"Cambria Math\";\n\tpanose-1:2 4 5 3 5 4 6 3 2 4;}}\n\
                 @font-face\n\t{{font-family:Calibri;\n\tpanose-1:2 15 5 2 2 2 4 3 2 4;}}\n/* Style Definitions */\n\
                 p.MsoNormal, li.MsoNormal, div.MsoNormal\n\t{{margin:0cm;\n\tfont-size:11.0pt;\n\tfont-family:\"Calibri\",sans-serif;\n\tmso-fareast-language:EN-US;}}\n\
                 a:link, span.MsoHyperlink\n\t{{mso-style-priority:99;\n\tcolor:#0563C1;\n\ttext-decoration:underline;}}\n\
                 span.EmailStyle17\n\t{{mso-style-type:personal-compose;\n\tfont-family:\"Calibri\",sans-serif;\n\tcolor:windowtext;}}\n\
                 .MsoChpDefault\n\t{{mso-style-type:export-only;\n\tfont-family:\"Calibri\",sans-serif;}}\n\
                 @page WordSection1\n\t{{size:612.0pt 792.0pt;\n\tmargin:70.85pt 70.85pt 2.0cm 70.85pt;}}\ndiv.WordSection1\n\t{{page:WordSection1;}}\n\
                 --></style><!--[if gte mso 9]><xml>\n<o:shapedefaults v:ext=\"edit\" spidmax=\"1026\" />\n</xml><![endif]-->\n</head>\n\
                 <body lang=\"{}\" link=\"#0563C1\" vlink=\"#954F72\" style=\"word-wrap:break-word\">\n<div class=\"WordSection1\">",
                cs.name(),
                lang_tag(c.lang)
            );
            for p in paras {
                let style = match p.kind {
                    ParaKind::Signature => " style=\"font-size:9.0pt;color:#7F7F7F\"",
                    _ => "",
                };
                if p.kind == ParaKind::Quote {
                    s.push_str("<div style=\"border:none;border-left:solid #E1E1E1 1.5pt;padding:0cm 0cm 0cm 4.0pt\">\n");
                }
                let _ = writeln!(
                    s,
                    "<p class=\"MsoNormal\"><span{style}>{}<o:p></o:p></span></p>\n<p class=\"MsoNormal\"><o:p>&nbsp;</o:p></p>",
                    escape_html(&p.text)
                );
                if p.kind == ParaKind::Quote {
                    s.push_str("</div>\n");
                }
            }
            s.push_str("</div>\n</body>\n</html>\n");
        }
        Client::Gmail => {
            s.push_str("<div dir=\"ltr\">");
            for p in paras {
                match p.kind {
                    ParaKind::Text => {
                        let _ = writeln!(s, "<div>{}</div><div><br></div>", escape_html(&p.text));
                    }
                    ParaKind::Signature => {
                        let _ = writeln!(
                            s,
                            "<span class=\"gmail_signature_prefix\">-- </span><br><div dir=\"ltr\" class=\"gmail_signature\">{}</div>",
                            escape_html(&p.text)
                        );
                    }
                    ParaKind::Quote => {
                        let _ = writeln!(
                            s,
                            "<div class=\"gmail_quote\"><blockquote class=\"gmail_quote\" style=\"margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);padding-left:1ex\">{}</blockquote></div>",
                            escape_html(&p.text)
                        );
                    }
                }
            }
            s.push_str("</div>\n");
        }
        Client::AppleMail | Client::Thunderbird | Client::Mobile => {
            let _ = writeln!(
                s,
                "<!DOCTYPE html>\n<html><head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset={}\">\n</head>\n\
                 <body style=\"overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;\">",
                cs.name()
            );
            for p in paras {
                match p.kind {
                    ParaKind::Text => {
                        let _ = writeln!(s, "<p>{}</p>", escape_html(&p.text));
                    }
                    ParaKind::Signature => {
                        let _ = writeln!(
                            s,
                            "<div class=\"moz-signature\">-- <br>{}</div>",
                            escape_html(&p.text)
                        );
                    }
                    ParaKind::Quote => {
                        let _ = writeln!(
                            s,
                            "<blockquote type=\"cite\">{}</blockquote>",
                            escape_html(&p.text)
                        );
                    }
                }
            }
            let _ = writeln!(
                s,
                "<p><a href=\"https://www.{dom}/\">www.{dom}</a></p>",
                dom = c.domain
            );
            if c.client == Client::Mobile || rng.random_bool(0.2) {
                let _ = writeln!(
                    s,
                    "<img src=\"https://t.example.net/o/{:016x}.gif\" width=\"1\" height=\"1\" alt=\"\">",
                    rng.random::<u64>()
                );
            }
            s.push_str("</body></html>\n");
        }
    }
    s
}

pub fn text_cte(cs: Charset, rng: &mut StdRng) -> Cte {
    match cs {
        Charset::Utf8 => weighted(
            rng,
            &[
                (Cte::EightBit, 50),
                (Cte::QuotedPrintable, 35),
                (Cte::Base64, 15),
            ],
        ),
        Charset::Ascii | Charset::Iso2022jp => Cte::SevenBit,
        Charset::Latin1 => weighted(rng, &[(Cte::QuotedPrintable, 85), (Cte::EightBit, 15)]),
        Charset::Win1252 => weighted(rng, &[(Cte::QuotedPrintable, 70), (Cte::EightBit, 30)]),
        Charset::Koi8r => weighted(rng, &[(Cte::EightBit, 80), (Cte::Base64, 20)]),
        Charset::ShiftJis => weighted(rng, &[(Cte::EightBit, 50), (Cte::Base64, 50)]),
    }
}

pub fn html_cte(cs: Charset, rng: &mut StdRng) -> Cte {
    match cs {
        Charset::Ascii | Charset::Iso2022jp => Cte::SevenBit,
        _ => weighted(rng, &[(Cte::QuotedPrintable, 70), (Cte::Base64, 30)]),
    }
}

pub fn boundary(rng: &mut StdRng) -> String {
    format!(
        "----=_Part_{:016x}{:08x}",
        rng.random::<u64>(),
        rng.random::<u32>()
    )
}

/// A leaf part: its header lines, a blank line and the encoded body.
pub fn leaf(mime: &str, cs: Charset, cte: Cte, text: &str) -> Vec<u8> {
    let mut out = format!(
        "Content-Type: {mime}; charset=\"{}\"\r\nContent-Transfer-Encoding: {}\r\n\r\n",
        cs.name(),
        cte.name()
    )
    .into_bytes();
    let bytes = encode_text(text, cs);
    match cte {
        Cte::SevenBit | Cte::EightBit => out.extend_from_slice(&crlf(&bytes)),
        Cte::QuotedPrintable => out.extend_from_slice(&quoted_printable(&bytes)),
        Cte::Base64 => out.extend_from_slice(&base64_lines(&bytes)),
    }
    out
}

pub fn multipart(subtype: &str, boundary: &str, parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("Content-Type: multipart/{subtype};\r\n\tboundary=\"{boundary}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n").into_bytes();
    for p in parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        out.extend_from_slice(p);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

pub fn attachment_part(rng: &mut StdRng, lang: Lang, stats: &mut CorpusStats) -> Vec<u8> {
    let size = rng.random_range(50_000..=500_000);
    let pdf = rng.random_bool(0.5);
    let mut bytes = vec![0u8; size];
    rng.fill_bytes(&mut bytes);
    let magic: &[u8] = if pdf {
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    } else {
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"
    };
    bytes[..magic.len()].copy_from_slice(magic);
    stats.attachments += 1;
    stats.attachment_bytes += size as u64;
    let n = rng.random_range(1000..9999);
    let (mime, name) = match (pdf, lang) {
        (true, Lang::De) => ("application/pdf", format!("Rechnung_März_{n}.pdf")),
        (true, Lang::Fr) => ("application/pdf", format!("facture_reçue_{n}.pdf")),
        (true, _) => ("application/pdf", format!("invoice-{n}.pdf")),
        (false, Lang::Ja) => ("image/png", format!("スクリーンショット_{n}.png")),
        (false, _) => ("image/png", format!("screenshot-{n}.png")),
    };
    let disposition = if name.is_ascii() {
        format!(
            "Content-Type: {mime}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
        )
    } else {
        // RFC 2231 for the file name, RFC 2047 for the old-style name parameter.
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!(
            "Content-Type: {mime}; name=\"=?UTF-8?B?{}?=\"\r\nContent-Disposition: attachment; filename*=UTF-8''{encoded}\r\n",
            base64(name.as_bytes())
        )
    };
    let mut out = format!("{disposition}Content-Transfer-Encoding: base64\r\n\r\n").into_bytes();
    out.extend_from_slice(&base64_lines(&bytes));
    out
}

/// `"Name" <addr>`, with the name RFC 2047-encoded when it is not ASCII.
pub fn mailbox_header(name: &str, email: &str, cs: Charset, rng: &mut StdRng) -> String {
    if name.is_ascii() {
        if name.contains(['\'', ',', '.']) {
            format!("\"{name}\" <{email}>")
        } else {
            format!("{name} <{email}>")
        }
    } else {
        format!("{} <{email}>", encoded_words(name, cs, rng))
    }
}

pub fn encode_header_text(s: &str, cs: Charset, rng: &mut StdRng) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        encoded_words(s, cs, rng)
    }
}

/// RFC 2047 encoded words, each a whole number of characters and at most 75 long.
pub fn encoded_words(s: &str, cs: Charset, rng: &mut StdRng) -> String {
    let cs = if cs == Charset::Ascii {
        Charset::Utf8
    } else {
        cs
    };
    let b = match cs {
        Charset::Koi8r | Charset::Iso2022jp | Charset::ShiftJis => true,
        Charset::Utf8 => rng.random_bool(0.5),
        _ => false,
    };
    let mut words = Vec::new();
    let mut chunk = String::new();
    let budget = if b { 36 } else { 45 };
    let flush = |chunk: &str, words: &mut Vec<String>| {
        let bytes = encode_text(chunk, cs);
        let body = if b { base64(&bytes) } else { q_encode(&bytes) };
        words.push(format!(
            "=?{}?{}?{body}?=",
            cs.name(),
            if b { 'B' } else { 'Q' }
        ));
    };
    for ch in s.chars() {
        let mut next = chunk.clone();
        next.push(ch);
        let len = encode_text(&next, cs).len();
        let cost = if b { len } else { len * 3 };
        if cost > budget && !chunk.is_empty() {
            flush(&chunk, &mut words);
            chunk.clear();
        }
        chunk.push(ch);
    }
    if !chunk.is_empty() {
        flush(&chunk, &mut words);
    }
    words.join("\r\n ")
}

pub fn q_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        match b {
            b' ' => out.push('_'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                out.push(b as char)
            }
            _ => {
                let _ = write!(out, "={b:02X}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Charset and transfer encoders (the generator's; the gateway decodes with mail-parser)
// ---------------------------------------------------------------------------------------

/// Text in `cs`; characters the charset lacks are folded to ASCII look-alikes or `?`.
pub fn encode_text(s: &str, cs: Charset) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    match cs {
        Charset::Utf8 => out.extend_from_slice(s.as_bytes()),
        Charset::Ascii | Charset::Latin1 | Charset::Win1252 => {
            for ch in s.chars() {
                if let Some(b) = win1252_byte(ch).filter(|_| cs == Charset::Win1252) {
                    out.push(b);
                } else if (ch as u32) < 0x80
                    || (cs != Charset::Ascii && (0xA0..=0xFF).contains(&(ch as u32)))
                {
                    out.push(ch as u32 as u8);
                } else {
                    out.extend_from_slice(ascii_fold(ch).as_bytes());
                }
            }
        }
        Charset::Koi8r => {
            for ch in s.chars() {
                match koi8r_byte(ch) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(ascii_fold(ch).as_bytes()),
                }
            }
        }
        Charset::Iso2022jp => {
            let mut kanji = false;
            for ch in s.chars() {
                if let Some((a, b)) = jis(ch) {
                    if !kanji {
                        out.extend_from_slice(b"\x1b$B");
                        kanji = true;
                    }
                    out.extend_from_slice(&[a, b]);
                } else {
                    if kanji {
                        out.extend_from_slice(b"\x1b(B");
                        kanji = false;
                    }
                    out.extend_from_slice(ascii_fold(ch).as_bytes());
                }
            }
            if kanji {
                out.extend_from_slice(b"\x1b(B");
            }
        }
        Charset::ShiftJis => {
            for ch in s.chars() {
                match jis(ch) {
                    Some((a, b)) => out.extend_from_slice(&jis_to_sjis(a, b)),
                    None => out.extend_from_slice(ascii_fold(ch).as_bytes()),
                }
            }
        }
    }
    out
}

pub fn representable(ch: char, cs: Charset) -> bool {
    let latin1 = (0xA0..=0xFF).contains(&(ch as u32));
    ch.is_ascii()
        || match cs {
            Charset::Utf8 => true,
            Charset::Ascii => false,
            Charset::Latin1 => latin1,
            Charset::Win1252 => latin1 || win1252_byte(ch).is_some(),
            Charset::Koi8r => koi8r_byte(ch).is_some(),
            Charset::Iso2022jp | Charset::ShiftJis => jis(ch).is_some(),
        }
}

pub fn ascii_fold(ch: char) -> String {
    match ch {
        c if c.is_ascii() => c.to_string(),
        '“' | '”' | '„' | '«' | '»' => "\"".into(),
        '‘' | '’' => "'".into(),
        '–' | '—' => "-".into(),
        '€' => "EUR".into(),
        '…' => "...".into(),
        _ => "?".into(),
    }
}

pub fn win1252_byte(ch: char) -> Option<u8> {
    Some(match ch {
        '€' => 0x80,
        '‚' => 0x82,
        '„' => 0x84,
        '…' => 0x85,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '™' => 0x99,
        _ => return None,
    })
}

/// KOI8-R: 0xC0..=0xFF hold the Cyrillic letters in this order (lower case, then upper case).
pub const KOI8R_LETTERS: &str = "юабцдефгхийклмнопярстужвьызшэщчъЮАБЦДЕФГХИЙКЛМНОПЯРСТУЖВЬЫЗШЭЩЧЪ";

pub fn koi8r_byte(ch: char) -> Option<u8> {
    if ch.is_ascii() {
        return Some(ch as u8);
    }
    match ch {
        'ё' => Some(0xA3),
        'Ё' => Some(0xB3),
        _ => KOI8R_LETTERS
            .chars()
            .position(|c| c == ch)
            .map(|i| 0xC0 + i as u8),
    }
}

/// JIS X 0208 codes of the characters the Japanese sample text uses (checked against
/// Python's `iso2022_jp` and `shift_jis` codecs when this table was made).
pub const JIS_X0208: &[(char, u8, u8)] = &[
    ('、', 0x21, 0x22),
    ('。', 0x21, 0x23),
    ('い', 0x24, 0x24),
    ('う', 0x24, 0x26),
    ('え', 0x24, 0x28),
    ('お', 0x24, 0x2A),
    ('か', 0x24, 0x2B),
    ('が', 0x24, 0x2C),
    ('き', 0x24, 0x2D),
    ('く', 0x24, 0x2F),
    ('ご', 0x24, 0x34),
    ('さ', 0x24, 0x35),
    ('し', 0x24, 0x37),
    ('す', 0x24, 0x39),
    ('せ', 0x24, 0x3B),
    ('そ', 0x24, 0x3D),
    ('た', 0x24, 0x3F),
    ('だ', 0x24, 0x40),
    ('っ', 0x24, 0x43),
    ('つ', 0x24, 0x44),
    ('て', 0x24, 0x46),
    ('で', 0x24, 0x47),
    ('な', 0x24, 0x4A),
    ('に', 0x24, 0x4B),
    ('の', 0x24, 0x4E),
    ('ま', 0x24, 0x5E),
    ('ょ', 0x24, 0x67),
    ('よ', 0x24, 0x68),
    ('り', 0x24, 0x6A),
    ('る', 0x24, 0x6B),
    ('ろ', 0x24, 0x6D),
    ('わ', 0x24, 0x6F),
    ('を', 0x24, 0x72),
    ('ん', 0x24, 0x73),
    ('ア', 0x25, 0x22),
    ('イ', 0x25, 0x24),
    ('ウ', 0x25, 0x26),
    ('カ', 0x25, 0x2B),
    ('ク', 0x25, 0x2F),
    ('グ', 0x25, 0x30),
    ('シ', 0x25, 0x37),
    ('ス', 0x25, 0x39),
    ('ッ', 0x25, 0x43),
    ('ト', 0x25, 0x48),
    ('ド', 0x25, 0x49),
    ('パ', 0x25, 0x51),
    ('ョ', 0x25, 0x67),
    ('リ', 0x25, 0x6A),
    ('ロ', 0x25, 0x6D),
    ('ワ', 0x25, 0x6F),
    ('ン', 0x25, 0x73),
    ('ー', 0x21, 0x3C),
    ('一', 0x30, 0x6C),
    ('世', 0x40, 0x24),
    ('中', 0x43, 0x66),
    ('付', 0x49, 0x55),
    ('件', 0x37, 0x6F),
    ('伊', 0x30, 0x4B),
    ('会', 0x32, 0x71),
    ('佐', 0x3A, 0x34),
    ('健', 0x37, 0x72),
    ('先', 0x40, 0x68),
    ('再', 0x3A, 0x46),
    ('加', 0x32, 0x43),
    ('合', 0x39, 0x67),
    ('咲', 0x3A, 0x69),
    ('品', 0x49, 0x4A),
    ('商', 0x3E, 0x26),
    ('問', 0x4C, 0x64),
    ('回', 0x32, 0x73),
    ('変', 0x4A, 0x51),
    ('太', 0x42, 0x40),
    ('子', 0x3B, 0x52),
    ('定', 0x44, 0x6A),
    ('小', 0x3E, 0x2E),
    ('届', 0x46, 0x4F),
    ('山', 0x3B, 0x33),
    ('式', 0x3C, 0x30),
    ('後', 0x38, 0x65),
    ('急', 0x35, 0x5E),
    ('手', 0x3C, 0x6A),
    ('教', 0x36, 0x35),
    ('文', 0x4A, 0x38),
    ('日', 0x46, 0x7C),
    ('更', 0x39, 0x39),
    ('書', 0x3D, 0x71),
    ('木', 0x4C, 0x5A),
    ('村', 0x42, 0x3C),
    ('林', 0x4E, 0x53),
    ('株', 0x33, 0x74),
    ('様', 0x4D, 0x4D),
    ('橋', 0x36, 0x36),
    ('求', 0x35, 0x61),
    ('注', 0x43, 0x6D),
    ('添', 0x45, 0x3A),
    ('渡', 0x45, 0x4F),
    ('田', 0x45, 0x44),
    ('直', 0x44, 0x3E),
    ('確', 0x33, 0x4E),
    ('社', 0x3C, 0x52),
    ('答', 0x45, 0x7A),
    ('続', 0x42, 0x33),
    ('美', 0x48, 0x7E),
    ('至', 0x3B, 0x6A),
    ('花', 0x32, 0x56),
    ('藤', 0x46, 0x23),
    ('覧', 0x4D, 0x77),
    ('設', 0x40, 0x5F),
    ('話', 0x4F, 0x43),
    ('認', 0x47, 0x27),
    ('請', 0x40, 0x41),
    ('辺', 0x4A, 0x55),
    ('返', 0x4A, 0x56),
    ('違', 0x30, 0x63),
    ('郎', 0x4F, 0x3A),
    ('金', 0x36, 0x62),
    ('鈴', 0x4E, 0x6B),
    ('間', 0x34, 0x56),
    ('額', 0x33, 0x5B),
    ('願', 0x34, 0x6A),
    ('高', 0x39, 0x62),
];

pub fn jis(ch: char) -> Option<(u8, u8)> {
    JIS_X0208
        .binary_search_by(|(c, _, _)| c.cmp(&ch))
        .ok()
        .map(|i| (JIS_X0208[i].1, JIS_X0208[i].2))
}

pub fn jis_to_sjis(j1: u8, j2: u8) -> [u8; 2] {
    let s1 = j1.div_ceil(2) + if j1 <= 0x5E { 0x70 } else { 0xB0 };
    let s2 = if j1 % 2 == 1 {
        j2 + if j2 >= 0x60 { 0x20 } else { 0x1F }
    } else {
        j2 + 0x7E
    };
    [s1, s2]
}

pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Quoted-printable (RFC 2045): lines of at most 76 characters, soft breaks, CRLF.
pub fn quoted_printable(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3 / 2);
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let mut col = 0;
        for (k, &b) in line.iter().enumerate() {
            let last = k + 1 == line.len();
            let literal =
                ((b == b' ' || b == b'\t') && !last) || ((33..=126).contains(&b) && b != b'=');
            let width = if literal { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
    }
    out
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 body: lines of 76 characters, CRLF.
pub fn base64_lines(bytes: &[u8]) -> Vec<u8> {
    let flat = base64(bytes);
    let mut out = Vec::with_capacity(flat.len() + flat.len() / 76 * 2 + 2);
    for line in flat.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The hand-made encoders against bytes produced by Python's codecs, and every sample
/// sentence against its charset, so the corpus never carries silently wrong bytes.
pub fn check_encoders() -> Result<(), String> {
    let cases = [
        (
            "Проблема с заказом",
            Charset::Koi8r,
            "8NLPwszFzcEg0yDawcvB2s/N",
        ),
        (
            "注文について",
            Charset::Iso2022jp,
            "GyRCQ21KOCRLJEQkJCRGGyhC",
        ),
        ("請求書の件", Charset::ShiftJis, "kL+LgY+RgsyMjw=="),
        (
            "Größe – „Test“ €",
            Charset::Win1252,
            "R3L232UgliCEVGVzdJMggA==",
        ),
    ];
    for (text, cs, want) in cases {
        let got = base64(&encode_text(text, cs));
        if got != want {
            return Err(format!(
                "{} encoder: {text:?} gave {got}, expected {want}",
                cs.name()
            ));
        }
    }
    for (lang, cs) in [
        (Lang::Ru, Charset::Koi8r),
        (Lang::Ja, Charset::Iso2022jp),
        (Lang::Ja, Charset::ShiftJis),
        (Lang::De, Charset::Win1252),
        (Lang::Fr, Charset::Latin1),
    ] {
        let d = lang_data(lang);
        let names = d.first.iter().chain(d.last).map(|n| n.0);
        for s in d
            .greet
            .iter()
            .chain(d.body)
            .chain(d.close)
            .chain(d.reply)
            .chain(d.subject)
            .copied()
            .chain(names)
        {
            if let Some(ch) = s.chars().find(|ch| !representable(*ch, cs)) {
                return Err(format!(
                    "{ch:?} in {s:?} is not representable in {}",
                    cs.name()
                ));
            }
        }
    }
    Ok(())
}
